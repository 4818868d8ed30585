;; exceptions: a throw caught by try_table carries 42 to proc_exit.
(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (tag $t (param i32))
  (memory (export "memory") 1)
  (func (export "_start")
    (block $caught (result i32)
      (try_table (catch $t $caught)
        (throw $t (i32.const 42)))
      (i32.const 1))
    (call $exit)))
