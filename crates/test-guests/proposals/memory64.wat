;; memory64: a 64-bit memory addressed with an i64.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory i64 1)
  (func (export "_start")
    (i32.store (i64.const 65000) (i32.const 42))
    (call $exit (i32.load (i64.const 65000)))))
