;; tail calls: a million-deep return_call recursion, which without tail
;; calls would exhaust the stack, ends with 42.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (func $count (param $n i32) (result i32)
    (if (result i32) (i32.eqz (local.get $n))
      (then (i32.const 42))
      (else (return_call $count (i32.sub (local.get $n) (i32.const 1))))))
  (memory (export "memory") 1)
  (func (export "_start")
    (call $exit (call $count (i32.const 1000000)))))
