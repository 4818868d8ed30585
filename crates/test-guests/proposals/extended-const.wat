;; extended constant expressions: a global initialised by 40 + 2.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (global $g i32 (i32.add (i32.const 40) (i32.const 2)))
  (memory (export "memory") 1)
  (func (export "_start")
    (call $exit (global.get $g))))
