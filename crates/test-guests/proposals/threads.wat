;; threads: atomic read-modify-write instructions (on an unshared memory:
;; the engine creates no shared memories, see the reference).
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 40)))
    (drop (i32.atomic.rmw.add (i32.const 0) (i32.const 2)))
    (call $exit (i32.atomic.load (i32.const 0)))))
