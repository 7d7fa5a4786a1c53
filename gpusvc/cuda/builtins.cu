// gpumesh's built-in kernels for the CUDA backend. builtins.ptx is
// generated from this file (go generate -tags cuda ./gpusvc/cuda) with
// NVRTC for compute_60, which every driver since CUDA 11 JIT-compiles for
// its GPU. No headers: half and bfloat16 are converted by hand, so the
// file compiles with any NVRTC.

#define TILE 16

__device__ __forceinline__ float h2f(unsigned short h) {
	float f;
	asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
	return f;
}
__device__ __forceinline__ unsigned short f2h(float f) {
	unsigned short h;
	asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
	return h;
}
__device__ __forceinline__ float b2f(unsigned short b) {
	return __uint_as_float(((unsigned int)b) << 16);
}
__device__ __forceinline__ unsigned short f2b(float f) {
	unsigned int u = __float_as_uint(f);
	if ((u & 0x7fffffff) > 0x7f800000) return (unsigned short)((u >> 16) | 0x40); // NaN stays NaN
	u += 0x7fff + ((u >> 16) & 1); // round to nearest even
	return (unsigned short)(u >> 16);
}

// C[m,n] = A[m,k] · B[k,n], row-major, float accumulation. Block TILE×TILE,
// grid (ceil(n/TILE), ceil(m/TILE)).
#define MATMUL(NAME, T, LOAD, STORE)                                              \
extern "C" __global__ void NAME(const T* A, const T* B, T* C, int m, int n, int k) { \
	__shared__ float As[TILE][TILE];                                              \
	__shared__ float Bs[TILE][TILE + 1];                                          \
	int row = blockIdx.y * TILE + threadIdx.y;                                    \
	int col = blockIdx.x * TILE + threadIdx.x;                                    \
	float acc = 0.0f;                                                             \
	for (int t = 0; t < k; t += TILE) {                                           \
		int ac = t + threadIdx.x, br = t + threadIdx.y;                           \
		As[threadIdx.y][threadIdx.x] = (row < m && ac < k) ? LOAD(A[(long)row * k + ac]) : 0.0f; \
		Bs[threadIdx.y][threadIdx.x] = (br < k && col < n) ? LOAD(B[(long)br * n + col]) : 0.0f; \
		__syncthreads();                                                          \
		_Pragma("unroll")                                                         \
		for (int i = 0; i < TILE; i++) acc += As[threadIdx.y][i] * Bs[i][threadIdx.x]; \
		__syncthreads();                                                          \
	}                                                                             \
	if (row < m && col < n) C[(long)row * n + col] = STORE(acc);                  \
}

#define ID(x) (x)
MATMUL(gm_matmul_f32, float, ID, ID)
MATMUL(gm_matmul_f16, unsigned short, h2f, f2h)
MATMUL(gm_matmul_bf16, unsigned short, b2f, f2b)

// out = a·x + y
extern "C" __global__ void gm_saxpy(float* out, float a, const float* x, const float* y, long n) {
	for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
		out[i] = a * x[i] + y[i];
}

// out[0] += Σ x; out[0] must be 0 before the launch. Block 256.
extern "C" __global__ void gm_reduce_sum(float* out, const float* x, long n) {
	__shared__ float s[256];
	float acc = 0.0f;
	for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
		acc += x[i];
	s[threadIdx.x] = acc;
	__syncthreads();
	for (int w = blockDim.x / 2; w > 0; w >>= 1) {
		if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
		__syncthreads();
	}
	if (threadIdx.x == 0) atomicAdd(out, s[0]);
}

// Softmax over rows of length cols: one block of 256 per row.
extern "C" __global__ void gm_softmax(float* out, const float* x, long rows, int cols) {
	__shared__ float s[256];
	long r = blockIdx.x;
	if (r >= rows) return;
	const float* in = x + r * cols;
	float* o = out + r * cols;
	float mx = __int_as_float(0xff800000); // -inf
	for (int i = threadIdx.x; i < cols; i += blockDim.x) mx = fmaxf(mx, in[i]);
	s[threadIdx.x] = mx;
	__syncthreads();
	for (int w = blockDim.x / 2; w > 0; w >>= 1) {
		if (threadIdx.x < w) s[threadIdx.x] = fmaxf(s[threadIdx.x], s[threadIdx.x + w]);
		__syncthreads();
	}
	mx = s[0];
	__syncthreads();
	float sum = 0.0f;
	for (int i = threadIdx.x; i < cols; i += blockDim.x) sum += expf(in[i] - mx);
	s[threadIdx.x] = sum;
	__syncthreads();
	for (int w = blockDim.x / 2; w > 0; w >>= 1) {
		if (threadIdx.x < w) s[threadIdx.x] += s[threadIdx.x + w];
		__syncthreads();
	}
	sum = s[0];
	for (int i = threadIdx.x; i < cols; i += blockDim.x) o[i] = expf(in[i] - mx) / sum;
}

extern "C" __global__ void gm_relu(float* out, const float* x, long n) {
	for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x)
		out[i] = fmaxf(x[i], 0.0f);
}

// B[n,m] = A[m,n]ᵀ for 4-byte elements. Block TILE×TILE, grid (ceil(n/TILE), ceil(m/TILE)).
extern "C" __global__ void gm_transpose(unsigned int* B, const unsigned int* A, int m, int n) {
	__shared__ unsigned int t[TILE][TILE + 1];
	int c = blockIdx.x * TILE + threadIdx.x, r = blockIdx.y * TILE + threadIdx.y;
	if (r < m && c < n) t[threadIdx.y][threadIdx.x] = A[(long)r * n + c];
	__syncthreads();
	int oc = blockIdx.y * TILE + threadIdx.x, or_ = blockIdx.x * TILE + threadIdx.y;
	if (or_ < n && oc < m) B[(long)or_ * m + oc] = t[threadIdx.x][threadIdx.y];
}
