;; GC: a struct allocated on the GC heap holds 42.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (type $box (struct (field i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (call $exit (struct.get $box 0 (struct.new $box (i32.const 42))))))
