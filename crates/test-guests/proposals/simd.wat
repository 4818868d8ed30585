;; SIMD: lanes 40 and 2 added across a v128.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $v v128)
    (local.set $v (i32x4.add (v128.const i32x4 40 0 0 0) (v128.const i32x4 2 0 0 0)))
    (call $exit (i32x4.extract_lane 0 (local.get $v)))))
