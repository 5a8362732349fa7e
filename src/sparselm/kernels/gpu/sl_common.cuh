// Shared by every CUDA C++ kernel file (through gemv_common.cuh and mma_common.cuh): SL_HD, which marks what the
// nvcc build and the g++ host emulation (what the CPU tests run) share, and the host twin of PTX prmt.
#pragma once
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define SL_HD __device__ __forceinline__
#else
#define SL_HD static inline
#endif

// PTX prmt.b32 in its default mode on the host: byte i of the result is byte (sel >> 4 i) & 7 of b:a. (Device code
// uses __byte_perm or the instruction itself.)
static inline uint32_t host_prmt(uint32_t a, uint32_t b, uint32_t sel) {
  const uint64_t v = ((uint64_t)b << 32) | a;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= (uint32_t)((v >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) << (8 * i);
  return r;
}
