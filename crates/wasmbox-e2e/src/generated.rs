//! Modules generated for tests and benchmarks: large ones, whose compile
//! takes long enough to see the compilers' tiers apart.

fn sleb(out: &mut Vec<u8>, mut n: i64) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        let done = (n == 0 && b & 0x40 == 0) || (n == -1 && b & 0x40 != 0);
        out.push(if done { b } else { b | 0x80 });
        if done {
            break;
        }
    }
}

fn section(out: &mut Vec<u8>, id: u8, body: &[u8]) {
    out.push(id);
    crate::uleb(out, body.len() as u64);
    out.extend_from_slice(body);
}

fn name(out: &mut Vec<u8>, s: &str) {
    crate::uleb(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// A large WASI core module, generated: `mb` MiB of code in functions of
/// about 1 KiB of straight-line integer arithmetic over two locals.
/// `_start` sleeps 600 s (poll_oneoff on a clock); the export `quick`
/// calls a chain of the functions and returns (exit 0). Another `seed`
/// makes other code (another module, for the cache).
pub fn large_module(mb: usize, seed: u64) -> Vec<u8> {
    let funcs = (mb << 20) / 1000;
    let mut m = b"\0asm\x01\0\0\0".to_vec();
    // Types: 0 poll_oneoff, 1 proc_exit, 2 () -> (), 3 (i32) -> i32.
    let mut types = Vec::new();
    crate::uleb(&mut types, 4);
    types.extend_from_slice(&[0x60, 4, 0x7f, 0x7f, 0x7f, 0x7f, 1, 0x7f]);
    types.extend_from_slice(&[0x60, 1, 0x7f, 0]);
    types.extend_from_slice(&[0x60, 0, 0]);
    types.extend_from_slice(&[0x60, 1, 0x7f, 1, 0x7f]);
    section(&mut m, 1, &types);
    let mut imports = Vec::new();
    crate::uleb(&mut imports, 2);
    for (f, ty) in [("poll_oneoff", 0u8), ("proc_exit", 1)] {
        name(&mut imports, "wasi_snapshot_preview1");
        name(&mut imports, f);
        imports.extend_from_slice(&[0x00, ty]);
    }
    section(&mut m, 2, &imports);
    let mut fsec = Vec::new();
    crate::uleb(&mut fsec, funcs as u64 + 2);
    fsec.extend_from_slice(&[2, 2]);
    fsec.extend(std::iter::repeat_n(3u8, funcs));
    section(&mut m, 3, &fsec);
    section(&mut m, 5, &[1, 0, 1]);
    let mut exports = Vec::new();
    crate::uleb(&mut exports, 3);
    name(&mut exports, "memory");
    exports.extend_from_slice(&[0x02, 0]);
    name(&mut exports, "_start");
    exports.extend_from_slice(&[0x00, 2]);
    name(&mut exports, "quick");
    exports.extend_from_slice(&[0x00, 3]);
    section(&mut m, 7, &exports);
    let mut code = Vec::new();
    crate::uleb(&mut code, funcs as u64 + 2);
    let body = |code: &mut Vec<u8>, b: &[u8]| {
        crate::uleb(code, b.len() as u64);
        code.extend_from_slice(b);
    };
    // _start: a clock subscription at 0 (timeout 600 s at offset 24),
    // events at 64, the count at 128.
    let mut start = vec![0x00, 0x41, 24, 0x42];
    sleb(&mut start, 600_000_000_000);
    start.extend_from_slice(&[0x37, 3, 0]);
    start.extend_from_slice(&[0x41, 0, 0x41, 0xc0, 0x00, 0x41, 1, 0x41, 0x80, 0x01, 0x10, 0, 0x1a, 0x0b]);
    body(&mut code, &start);
    // quick: f(f(f(1))) over the first 200 functions.
    let mut quick = vec![0x00, 0x41, 1];
    for i in 0..funcs.min(200) {
        quick.push(0x10);
        crate::uleb(&mut quick, i as u64 + 4);
    }
    quick.extend_from_slice(&[0x1a, 0x0b]);
    body(&mut code, &quick);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    if x == 0 {
        x = 1;
    }
    for _ in 0..funcs {
        // One i32 local beside the parameter.
        let mut f = vec![1, 1, 0x7f, 0x20, 0, 0x21, 1];
        while f.len() < 990 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let k = (x >> 20) as i64 & 0x1fff;
            // acc = acc OP k; on some steps param = param OP acc.
            f.extend_from_slice(&[0x20, 1, 0x41]);
            sleb(&mut f, k);
            f.push([0x6a, 0x6b, 0x6c, 0x73, 0x77][(x % 5) as usize]);
            f.extend_from_slice(&[0x21, 1]);
            if x.is_multiple_of(4) {
                f.extend_from_slice(&[0x20, 0, 0x20, 1, 0x73, 0x21, 0]);
            }
        }
        f.extend_from_slice(&[0x20, 0, 0x20, 1, 0x6a, 0x0b]);
        body(&mut code, &f);
    }
    section(&mut m, 10, &code);
    m
}

/// `wasm` (a module or a component) with a custom section carrying `tag`
/// appended: the same program with another digest, so another cache entry.
pub fn tagged(wasm: &[u8], tag: &str) -> Vec<u8> {
    let mut payload = Vec::new();
    name(&mut payload, "wasmbox-test");
    payload.extend_from_slice(tag.as_bytes());
    let mut out = wasm.to_vec();
    section(&mut out, 0, &payload);
    out
}
