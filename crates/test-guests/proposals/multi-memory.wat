;; multi-memory: 42 stored in the second memory and read back from it.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory $a (export "memory") 1)
  (memory $b 1)
  (func (export "_start")
    (i32.store $b (i32.const 8) (i32.const 42))
    (call $exit (i32.add (i32.load $a (i32.const 8)) (i32.load $b (i32.const 8))))))
