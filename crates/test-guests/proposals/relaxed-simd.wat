;; relaxed SIMD: 42.0 truncated lane-wise to 42.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (call $exit (i32x4.extract_lane 0
      (i32x4.relaxed_trunc_f32x4_s (v128.const f32x4 42.0 0.0 0.0 0.0))))))
