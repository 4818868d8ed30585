//! A unified diff of two texts, line by line, for `--dry-run`: what a
//! person reviews before a configuration is rewritten.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op<'a> {
    Same(&'a str),
    Gone(&'a str),
    Added(&'a str),
}

/// Above this many cells of the comparison table, the differing middle is
/// shown as removed and added whole.
const MAX_CELLS: usize = 4_000_000;

/// The edit script: common prefix and suffix as they are, the middle by
/// longest common subsequence.
fn ops<'a>(old: &[&'a str], new: &[&'a str]) -> Vec<Op<'a>> {
    let prefix = old.iter().zip(new).take_while(|(a, b)| a == b).count();
    let suffix = old[prefix..].iter().rev().zip(new[prefix..].iter().rev()).take_while(|(a, b)| a == b).count();
    let (a, b) = (&old[prefix..old.len() - suffix], &new[prefix..new.len() - suffix]);
    let mut out: Vec<Op> = old[..prefix].iter().map(|l| Op::Same(l)).collect();
    if (a.len() + 1) * (b.len() + 1) > MAX_CELLS {
        out.extend(a.iter().map(|l| Op::Gone(l)));
        out.extend(b.iter().map(|l| Op::Added(l)));
    } else {
        // lcs[i][j]: longest common subsequence of a[i..] and b[j..].
        let w = b.len() + 1;
        let mut lcs = vec![0u32; (a.len() + 1) * w];
        for i in (0..a.len()).rev() {
            for j in (0..b.len()).rev() {
                lcs[i * w + j] = if a[i] == b[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            if i < a.len() && j < b.len() && a[i] == b[j] {
                out.push(Op::Same(a[i]));
                i += 1;
                j += 1;
            } else if i < a.len() && (j == b.len() || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) {
                // Removals first, as diff -u shows a replaced line.
                out.push(Op::Gone(a[i]));
                i += 1;
            } else {
                out.push(Op::Added(b[j]));
                j += 1;
            }
        }
    }
    out.extend(old[old.len() - suffix..].iter().map(|l| Op::Same(l)));
    out
}

/// `diff -u`'s form with three lines of context; empty when equal.
pub fn unified(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    let old_lines: Vec<&str> = old.lines().collect();
    let new_lines: Vec<&str> = new.lines().collect();
    let ops = ops(&old_lines, &new_lines);
    if ops.iter().all(|o| matches!(o, Op::Same(_))) {
        return String::new();
    }
    const CONTEXT: usize = 3;
    let changed: Vec<usize> = (0..ops.len()).filter(|&k| !matches!(ops[k], Op::Same(_))).collect();
    // Hunks: runs of changes less than 2 * CONTEXT apart, with context.
    let mut hunks: Vec<(usize, usize)> = Vec::new();
    for &k in &changed {
        let (start, end) = (k.saturating_sub(CONTEXT), (k + CONTEXT + 1).min(ops.len()));
        match hunks.last_mut() {
            Some(last) if start <= last.1 => last.1 = end,
            _ => hunks.push((start, end)),
        }
    }
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    // Line numbers (1-based) at the start of each op.
    let (mut at_old, mut at_new) = (Vec::with_capacity(ops.len()), Vec::with_capacity(ops.len()));
    let (mut o, mut n) = (1usize, 1usize);
    for op in &ops {
        at_old.push(o);
        at_new.push(n);
        match op {
            Op::Same(_) => {
                o += 1;
                n += 1;
            }
            Op::Gone(_) => o += 1,
            Op::Added(_) => n += 1,
        }
    }
    for (start, end) in hunks {
        let span = &ops[start..end];
        let olen = span.iter().filter(|o| !matches!(o, Op::Added(_))).count();
        let nlen = span.iter().filter(|o| !matches!(o, Op::Gone(_))).count();
        // diff -u names the line before an empty range.
        let ostart = if olen == 0 { at_old[start] - 1 } else { at_old[start] };
        let nstart = if nlen == 0 { at_new[start] - 1 } else { at_new[start] };
        out += &format!("@@ -{ostart},{olen} +{nstart},{nlen} @@\n");
        for op in span {
            let (mark, line) = match op {
                Op::Same(l) => (' ', l),
                Op::Gone(l) => ('-', l),
                Op::Added(l) => ('+', l),
            };
            out.push(mark);
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::unified;

    #[test]
    fn equal_texts_have_no_diff() {
        assert_eq!(unified("a\nb\n", "a\nb\n", "x", "y"), "");
    }

    #[test]
    fn an_insertion_in_the_middle() {
        let old: String = (1..=10).map(|i| format!("{i}\n")).collect();
        let new = old.replace("5\n", "5\nnew\n");
        assert_eq!(unified(&old, &new, "a", "b"), "--- a\n+++ b\n@@ -3,6 +3,7 @@\n 3\n 4\n 5\n+new\n 6\n 7\n 8\n");
    }

    #[test]
    fn distant_changes_are_separate_hunks_and_a_new_file_is_all_added() {
        let old: String = (1..=20).map(|i| format!("{i}\n")).collect();
        let new = old.replace("2\n", "two\n").replace("19\n", "nineteen\n");
        let d = unified(&old, &new, "a", "b");
        assert_eq!(d.matches("@@ -").count(), 2, "{d}");
        assert!(d.contains("-2\n+two\n") && d.contains("-19\n+nineteen\n"), "{d}");
        assert_eq!(unified("", "x\ny\n", "/dev/null", "f"), "--- /dev/null\n+++ f\n@@ -0,0 +1,2 @@\n+x\n+y\n");
    }
}
