/* AFL++ edge coverage for code compiled by GCC with -fsanitize-coverage=trace-pc.
 *
 * gfortran cannot load Debian 12's AFL++ GCC plugin (it was built for another gcc-12
 * revision), but GCC itself calls __sanitizer_cov_trace_pc() at every basic block under
 * that option: this turns the calls into AFL's classic hashed (previous, current) edge
 * counters in the shared map that AFL++'s runtime (afl-compiler-rt.o) maps and reports.
 * Built without instrumentation; used by tests/fuzz/afl_model_reader.py only. */
#include <stdint.h>

extern uint8_t *__afl_area_ptr;
extern uint32_t __afl_map_size;

static __thread uintptr_t previous_location;

void __sanitizer_cov_trace_pc(void) {
  uintptr_t pc = (uintptr_t)__builtin_return_address(0);
  uintptr_t here = ((pc >> 4) ^ (pc << 8)) & 0xffffu;
  __afl_area_ptr[(here ^ previous_location) & (__afl_map_size - 1u)]++;
  previous_location = here >> 1;
}
