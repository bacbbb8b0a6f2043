//! A CPU fast path for `y = x W^T + b` when `x` has a few rows: the weight products of a
//! sampling step, one row per sequence.
//!
//! Why it exists: at a handful of rows, libtorch's float32 `linear` (MKL's sgemm) spends about
//! half its time packing `W` into its panel layout, on every call: it reads `W`, writes the
//! packed copy and reads that again. Here `W` is read once, in place (row-major `[N, K]`, as
//! the model stores it), two rows at a time, each pair multiplied with up to eight rows of `x`
//! held in registers (AVX-512; four with AVX2, which has half the registers, for CPUs without
//! AVX-512). On the 2-vCPU Intel machine of BENCHMARKS.md the 32 products of a `small` decode
//! step at 8 rows take about 2.5 ms here against 4.5 ms through `linear` (issue #4).
//!
//! Threads: the rows of `W` are split over libtorch's own intra-op threads (its OpenMP team,
//! through libgomp's `GOMP_parallel`, which `#pragma omp parallel` compiles to), so no second
//! pool competes with libtorch's for the cores, and the team is already awake between calls.
//! A new team of threads per call (e.g. rayon's `scope` from outside its pool) costs about
//! 0.1 ms a call, more than the work.
//!
//! What it is not: a general matrix product. It applies only where it is faster and exact to
//! float32 rounding: CPU, float32, contiguous `W`, at most [`MAX_ROWS`] rows (fewer with
//! AVX2), an x86-64 CPU with AVX-512F or AVX2 and FMA, and libtorch's threads from libgomp
//! (or one thread). Everywhere else [`linear`] returns `None` and the caller uses libtorch.
//! It records no autograd graph: callers use it only for passes without gradients (sampling).

use tch::{Device, Kind, Tensor};

/// The most rows of `x` this path takes (with AVX-512; see [`kernel::Isa::rows`]).
pub const MAX_ROWS: i64 = 24;

/// `x W^T + b` over the last dimension of `x` (`weight` is `[N, K]`, `bias` `[N]`), or `None`
/// where this path does not apply; see the module's doc.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Option<Tensor> {
    linear_with(kernel::available()?, x, weight, bias)
}

/// [`linear`] with a given kernel (the tests run every extension the CPU has).
fn linear_with(
    kernel: &kernel::Kernel,
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> Option<Tensor> {
    let threads = usize::try_from(tch::get_num_threads()).unwrap_or(1).max(1);
    if threads > 1 && !kernel.has_team() {
        // One thread here would lose to MKL on several.
        return None;
    }
    let cpu_float = |t: &Tensor| t.device() == Device::Cpu && t.kind() == Kind::Float;
    if !cpu_float(x) || !cpu_float(weight) || !weight.is_contiguous() {
        return None;
    }
    let (n, k) = weight.size2().ok()?;
    let mut out_shape = x.size();
    if out_shape.last() != Some(&k) || k == 0 || n == 0 {
        return None;
    }
    let rows = x.numel() as i64 / k;
    if !kernel.isa().rows().contains(&rows) {
        return None;
    }
    if let Some(b) = bias
        && (!cpu_float(b) || !b.is_contiguous() || b.size() != [n])
    {
        return None;
    }
    let x = x.contiguous();
    let out = Tensor::empty([rows, n], (Kind::Float, Device::Cpu));
    kernel.run(&x, weight, bias, &out, [rows as usize, n as usize, k as usize], threads);
    if let Some(last) = out_shape.last_mut() {
        *last = n;
    }
    Some(out.view(out_shape.as_slice()))
}

/// The raw-pointer part: the SIMD kernel and the OpenMP team it runs on.
#[allow(unsafe_code)]
mod kernel {
    use std::ffi::{c_int, c_uint, c_void};
    use std::sync::OnceLock;

    use tch::Tensor;

    type GompParallel =
        unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
    type OmpQuery = unsafe extern "C" fn() -> c_int;

    /// The vector extension the kernel runs with.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Isa {
        /// 512-bit registers (AVX-512F).
        Avx512,
        /// 256-bit registers (AVX2 and FMA).
        Avx2,
    }

    impl Isa {
        /// Both, widest first.
        pub(super) const ALL: [Isa; 2] = [Isa::Avx512, Isa::Avx2];

        /// The row counts where it beats libtorch's `linear`, measured with `policy bench
        /// --config small` (generation tok/s) on the machine of BENCHMARKS.md, which has both
        /// (AVX2 forced there; not measured on a CPU without AVX-512). AVX-512: 1.12x at 1 row,
        /// about 1.5x at 4 to 16, 1.14x at 24, the same at 32; at 64 MKL's packing pays for
        /// itself. AVX2: 0.96x at 1 row, 1.05x at 2, 1.13x to 1.27x at 4 to 16, 0.9x at 24.
        pub(super) fn rows(self) -> std::ops::RangeInclusive<i64> {
            match self {
                Isa::Avx512 => 1..=super::MAX_ROWS,
                Isa::Avx2 => 2..=16,
            }
        }

        /// Whether this CPU has it.
        pub(super) fn supported(self) -> bool {
            #[cfg(target_arch = "x86_64")]
            return match self {
                Isa::Avx512 => std::is_x86_feature_detected!("avx512f"),
                Isa::Avx2 => {
                    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
                }
            };
            #[cfg(not(target_arch = "x86_64"))]
            false
        }
    }

    /// What this machine offers: a vector extension, and libgomp's entry points if libtorch
    /// uses it.
    pub(super) struct Kernel {
        isa: Isa,
        team: Option<(GompParallel, OmpQuery, OmpQuery)>,
    }

    /// The kernel with the widest extension this CPU has, if any (looked up once).
    pub(super) fn available() -> Option<&'static Kernel> {
        static KERNEL: OnceLock<Option<Kernel>> = OnceLock::new();
        KERNEL.get_or_init(|| Isa::ALL.into_iter().find_map(with_isa)).as_ref()
    }

    /// The kernel with `isa`, if this CPU has it.
    pub(super) fn with_isa(isa: Isa) -> Option<Kernel> {
        isa.supported().then(|| Kernel { isa, team: openmp_team() })
    }

    /// libgomp's entry points. libgomp is loaded with libtorch_cpu (a dependency of this
    /// binary), so its symbols are in the global scope; a libtorch built with another OpenMP
    /// (or none) has no `GOMP_parallel`.
    fn openmp_team() -> Option<(GompParallel, OmpQuery, OmpQuery)> {
        // libgomp is loaded with libtorch_cpu (a dependency of this binary), so its symbols
        // are in the global scope.
        let symbol = |name: &std::ffi::CStr| {
            // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the name up.
            let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        match (
            symbol(c"GOMP_parallel"),
            symbol(c"omp_get_thread_num"),
            symbol(c"omp_get_num_threads"),
        ) {
            // SAFETY: these are libgomp's exported functions with these C signatures (its ABI
            // since GCC 4.9: `void GOMP_parallel(void (*)(void *), void *, unsigned, unsigned)`,
            // `int omp_get_thread_num(void)`, `int omp_get_num_threads(void)`).
            (Some(parallel), Some(thread_num), Some(num_threads)) => unsafe {
                Some((
                    std::mem::transmute::<*mut c_void, GompParallel>(parallel),
                    std::mem::transmute::<*mut c_void, OmpQuery>(thread_num),
                    std::mem::transmute::<*mut c_void, OmpQuery>(num_threads),
                ))
            },
            _ => None,
        }
    }

    /// One product: raw pointers into tensors the caller holds for the whole call.
    struct Job {
        x: *const f32,
        w: *const f32,
        bias: *const f32,
        y: *mut f32,
        rows: usize,
        n: usize,
        k: usize,
        isa: Isa,
        team: Option<(OmpQuery, OmpQuery)>,
    }

    impl Kernel {
        /// The extension it runs with.
        pub(super) fn isa(&self) -> Isa {
            self.isa
        }

        /// Whether libtorch's OpenMP team (libgomp) was found, so the work can be shared.
        pub(super) fn has_team(&self) -> bool {
            self.team.is_some()
        }

        /// `out[m, j] = x[m] . w[j] + bias[j]` on up to `threads` threads; every tensor is
        /// float32, contiguous and of the shape the caller checked (`[rows, n, k]`: `x`
        /// [rows, k], `w` [n, k], `bias` [n], `out` [rows, n]).
        pub(super) fn run(
            &self,
            x: &Tensor,
            w: &Tensor,
            bias: Option<&Tensor>,
            out: &Tensor,
            [rows, n, k]: [usize; 3],
            threads: usize,
        ) {
            let mut job = Job {
                x: x.data_ptr() as *const f32,
                w: w.data_ptr() as *const f32,
                bias: bias.map_or(std::ptr::null(), |b| b.data_ptr() as *const f32),
                y: out.data_ptr() as *mut f32,
                rows,
                n,
                k,
                isa: self.isa,
                team: None,
            };
            match self.team {
                Some((parallel, thread_num, num_threads)) if threads > 1 && n >= 2 * threads => {
                    job.team = Some((thread_num, num_threads));
                    let data = &job as *const Job as *mut c_void;
                    // SAFETY: `run_share` only reads `job`, which outlives the call (the team
                    // joins before GOMP_parallel returns); each thread writes its own columns.
                    unsafe { parallel(run_share, data, threads as c_uint, 0) };
                }
                // SAFETY: the pointers cover the shapes above; this thread writes every column.
                _ => unsafe { columns(&job, 0, n) },
            }
        }
    }

    /// One thread's share of a job: an equal run of `W`'s rows (in pairs).
    extern "C" fn run_share(data: *mut c_void) {
        // SAFETY: `data` is the `Job` that `Kernel::run` passed, alive until the team joins.
        let job = unsafe { &*(data as *const Job) };
        let Some((thread_num, num_threads)) = job.team else { return };
        // SAFETY: libgomp's queries, called inside its parallel region.
        let (t, threads) = unsafe { (thread_num(), num_threads()) };
        let (t, threads) = (t.max(0) as usize, threads.max(1) as usize);
        let per_thread = job.n.div_ceil(threads).div_ceil(2) * 2;
        let start = (t * per_thread).min(job.n);
        let end = (start + per_thread).min(job.n);
        // SAFETY: the threads' column ranges are disjoint and inside [0, n).
        unsafe { columns(job, start, end) }
    }

    /// Columns `start..end` of the output, every row.
    ///
    /// # Safety
    /// The job's pointers cover its shapes, and no other thread writes these columns.
    unsafe fn columns(job: &Job, start: usize, end: usize) {
        // SAFETY: a `Kernel` (and so a job) exists only with an extension this CPU has.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            match job.isa {
                Isa::Avx512 => simd::columns_avx512(job, start, end),
                Isa::Avx2 => simd::columns_avx2(job, start, end),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (job, start, end);
    }

    #[cfg(target_arch = "x86_64")]
    mod simd {
        use std::arch::x86_64::*;

        use super::Job;

        /// One x86-64 vector extension: its register, and the few operations the kernel uses.
        /// The methods are `unsafe` intrinsics; callers run them inside a function compiled
        /// for that extension (`#[target_feature]`), into which they inline.
        pub(super) trait Lanes: Copy {
            /// Floats in a register.
            const LANES: usize;
            /// Rows of `x` per block: `ROWS` x 2 accumulators, leaving registers for two rows
            /// of `W` and one of `x`.
            const ROWS: usize;
            unsafe fn zero() -> Self;
            unsafe fn load(p: *const f32) -> Self;
            /// The first `n` (fewer than `LANES`) floats at `p`, zeros after; reads no further.
            unsafe fn load_first(p: *const f32, n: usize) -> Self;
            /// `a * b + c`.
            unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self;
            /// The sum of the lanes.
            unsafe fn sum(self) -> f32;
        }

        impl Lanes for __m512 {
            const LANES: usize = 16;
            const ROWS: usize = 8;
            #[inline(always)]
            unsafe fn zero() -> Self {
                // SAFETY: inside a function compiled for this extension (the trait's doc).
                unsafe { _mm512_setzero_ps() }
            }
            #[inline(always)]
            unsafe fn load(p: *const f32) -> Self {
                // SAFETY: the pointer covers 16 floats; inside a function compiled for AVX-512F.
                unsafe { _mm512_loadu_ps(p) }
            }
            #[inline(always)]
            unsafe fn load_first(p: *const f32, n: usize) -> Self {
                // SAFETY: masked-off lanes are not read; inside a function compiled for AVX-512F.
                unsafe { _mm512_maskz_loadu_ps(((1u32 << n) - 1) as __mmask16, p) }
            }
            #[inline(always)]
            unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
                // SAFETY: inside a function compiled for this extension (the trait's doc).
                unsafe { _mm512_fmadd_ps(a, b, c) }
            }
            #[inline(always)]
            unsafe fn sum(self) -> f32 {
                // SAFETY: inside a function compiled for this extension (the trait's doc).
                unsafe { _mm512_reduce_add_ps(self) }
            }
        }

        impl Lanes for __m256 {
            const LANES: usize = 8;
            const ROWS: usize = 4;
            #[inline(always)]
            unsafe fn zero() -> Self {
                // SAFETY: inside a function compiled for this extension (the trait's doc).
                unsafe { _mm256_setzero_ps() }
            }
            #[inline(always)]
            unsafe fn load(p: *const f32) -> Self {
                // SAFETY: the pointer covers 8 floats; inside a function compiled for AVX2.
                unsafe { _mm256_loadu_ps(p) }
            }
            #[inline(always)]
            unsafe fn load_first(p: *const f32, n: usize) -> Self {
                // SAFETY: inside a function compiled for this extension (the trait's doc);
                // masked-off lanes are not read.
                unsafe {
                    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
                    let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lane);
                    _mm256_maskload_ps(p, mask)
                }
            }
            #[inline(always)]
            unsafe fn mul_add(a: Self, b: Self, c: Self) -> Self {
                // SAFETY: inside a function compiled for this extension (the trait's doc).
                unsafe { _mm256_fmadd_ps(a, b, c) }
            }
            #[inline(always)]
            unsafe fn sum(self) -> f32 {
                // SAFETY: inside a function compiled for this extension (the trait's doc).
                unsafe {
                    let four =
                        _mm_add_ps(_mm256_castps256_ps128(self), _mm256_extractf128_ps(self, 1));
                    let two = _mm_add_ps(four, _mm_movehl_ps(four, four));
                    _mm_cvtss_f32(_mm_add_ss(two, _mm_shuffle_ps(two, two, 1)))
                }
            }
        }

        /// How many rows of `W` ahead the first row block prefetches.
        const PREFETCH_ROWS: usize = 4;

        /// [`columns`] with 512-bit registers.
        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn columns_avx512(job: &Job, start: usize, end: usize) {
            // SAFETY: as the caller's.
            unsafe { columns::<__m512>(job, start, end) }
        }

        /// [`columns`] with 256-bit registers.
        #[target_feature(enable = "avx2,fma")]
        pub(super) unsafe fn columns_avx2(job: &Job, start: usize, end: usize) {
            // SAFETY: as the caller's.
            unsafe { columns::<__m256>(job, start, end) }
        }

        /// Output columns `start..end`, every row: pairs of `W`'s rows, then the odd one.
        #[inline(always)]
        unsafe fn columns<V: Lanes>(job: &Job, start: usize, end: usize) {
            let mut j = start;
            while j + 2 <= end {
                // SAFETY: rows j and j + 1 of W exist (j + 2 <= end <= n).
                unsafe { weight_rows::<V, 2>(job, j) };
                j += 2;
            }
            if j < end {
                // SAFETY: row j of W exists.
                unsafe { weight_rows::<V, 1>(job, j) };
            }
        }

        /// Output columns `j..j + NR` for every row of `x`, a block of rows at a time (the
        /// `NR` rows of `W` stay in L1 between blocks).
        #[inline(always)]
        unsafe fn weight_rows<V: Lanes, const NR: usize>(job: &Job, j: usize) {
            let mut m = 0;
            while m < job.rows {
                let prefetch = m == 0;
                // SAFETY: rows m.. of x exist; each block reads min(rows - m, ROWS) of them.
                unsafe {
                    match (job.rows - m).min(V::ROWS) {
                        1 => block::<V, 1, NR>(job, m, j, prefetch),
                        2 => block::<V, 2, NR>(job, m, j, prefetch),
                        3 => block::<V, 3, NR>(job, m, j, prefetch),
                        4 => block::<V, 4, NR>(job, m, j, prefetch),
                        5 => block::<V, 5, NR>(job, m, j, prefetch),
                        6 => block::<V, 6, NR>(job, m, j, prefetch),
                        7 => block::<V, 7, NR>(job, m, j, prefetch),
                        _ => block::<V, 8, NR>(job, m, j, prefetch),
                    }
                }
                m += V::ROWS;
            }
        }

        /// `MR` rows of `x` (from `m`) times `NR` rows of `W` (from `j`): MR x NR dot products
        /// of length k, a register at a time, the last partial register masked.
        #[inline(always)]
        unsafe fn block<V: Lanes, const MR: usize, const NR: usize>(
            job: &Job,
            m: usize,
            j: usize,
            prefetch: bool,
        ) {
            let k = job.k;
            let whole = k / V::LANES * V::LANES;
            // SAFETY (every access below): x rows m..m + MR and W rows j..j + NR exist and have
            // k floats each; full loads stop at `whole`, and the tail loads k - whole lanes.
            // Prefetches are hints and never fault; they stay inside W anyway.
            unsafe {
                let mut acc = [[V::zero(); NR]; MR];
                let x = job.x.add(m * k);
                let w = job.w.add(j * k);
                let ahead = prefetch && j + PREFETCH_ROWS + NR <= job.n;
                let mut c = 0;
                while c < whole {
                    let mut wv = [V::zero(); NR];
                    for (r, v) in wv.iter_mut().enumerate() {
                        *v = V::load(w.add(r * k + c));
                        // One prefetch per 64-byte line.
                        if ahead && c % 16 == 0 {
                            let next = w.add((PREFETCH_ROWS + r) * k + c);
                            _mm_prefetch::<_MM_HINT_T0>(next as *const i8);
                        }
                    }
                    for (i, row) in acc.iter_mut().enumerate() {
                        let xv = V::load(x.add(i * k + c));
                        for (a, &wr) in row.iter_mut().zip(&wv) {
                            *a = V::mul_add(wr, xv, *a);
                        }
                    }
                    c += V::LANES;
                }
                if c < k {
                    let mut wv = [V::zero(); NR];
                    for (r, v) in wv.iter_mut().enumerate() {
                        *v = V::load_first(w.add(r * k + c), k - c);
                    }
                    for (i, row) in acc.iter_mut().enumerate() {
                        let xv = V::load_first(x.add(i * k + c), k - c);
                        for (a, &wr) in row.iter_mut().zip(&wv) {
                            *a = V::mul_add(wr, xv, *a);
                        }
                    }
                }
                for (i, row) in acc.iter().enumerate() {
                    for (r, &a) in row.iter().enumerate() {
                        let bias = if job.bias.is_null() { 0.0 } else { *job.bias.add(j + r) };
                        *job.y.add((m + i) * job.n + j + r) = a.sum() + bias;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The product in float64 through libtorch: the reference.
    fn reference(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let b64 = b.map(|b| b.to_kind(Kind::Double));
        x.to_kind(Kind::Double).linear(&w.to_kind(Kind::Double), b64.as_ref())
    }

    fn max_error(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_kind(Kind::Double) - b).abs().max().double_value(&[])
    }

    /// A kernel for each extension this CPU has; says so when there is none.
    fn kernels() -> Vec<kernel::Kernel> {
        let kernels: Vec<_> = kernel::Isa::ALL.into_iter().filter_map(kernel::with_isa).collect();
        if kernels.is_empty() {
            eprintln!("SKIPPED: no AVX-512F or AVX2, so the small-batch kernel is never used");
        }
        kernels
    }

    #[test]
    fn matches_a_float64_product_at_every_row_count_and_shape() {
        for kernel in kernels() {
            matches_a_float64_product_with(&kernel);
        }
    }

    fn matches_a_float64_product_with(kernel: &kernel::Kernel) {
        tch::manual_seed(7);
        let _guard = tch::no_grad_guard();
        // k: whole 16-lane groups, a masked tail, only a tail; n: even, odd, one row.
        for &(k, n) in &[(64, 96), (100, 37), (7, 5), (1408, 512), (512, 1), (33, 2)] {
            let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu));
            let bias = Tensor::randn([n], (Kind::Float, Device::Cpu));
            for rows in kernel.isa().rows() {
                let x = Tensor::randn([rows, 1, k], (Kind::Float, Device::Cpu));
                for b in [None, Some(&bias)] {
                    let got = linear_with(kernel, &x, &w, b).expect("the fast path applies");
                    assert_eq!(got.size(), [rows, 1, n]);
                    let want = reference(&x, &w, b);
                    // float32 rounding of a k-term sum of products of unit normals.
                    let tolerance = 1e-6 * (k as f64).sqrt() * 8.0;
                    let error = max_error(&got, &want);
                    let isa = kernel.isa();
                    assert!(error < tolerance, "{isa:?} k={k} n={n} rows={rows}: error {error}");
                }
            }
        }
    }

    #[test]
    fn splits_the_work_over_libtorchs_threads_without_changing_the_result() {
        let _guard = tch::no_grad_guard();
        let w = Tensor::randn([301, 96], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([5, 96], (Kind::Float, Device::Cpu));
        for kernel in kernels() {
            let threads = tch::get_num_threads();
            tch::set_num_threads(1);
            let one = linear_with(&kernel, &x, &w, None).expect("the fast path applies");
            tch::set_num_threads(3);
            let three = linear_with(&kernel, &x, &w, None).expect("the fast path applies");
            tch::set_num_threads(threads);
            // Each column is one thread's dot product either way: the same bits.
            assert!(one.equal(&three), "{:?}", kernel.isa());
            assert!(max_error(&one, &reference(&x, &w, None)) < 1e-4);
        }
    }

    #[test]
    fn declines_what_it_does_not_cover() {
        let w = Tensor::randn([8, 16], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([MAX_ROWS + 1, 16], (Kind::Float, Device::Cpu));
        assert!(linear(&x, &w, None).is_none(), "too many rows");
        let x = Tensor::randn([2, 16], (Kind::Float, Device::Cpu));
        assert!(linear(&x.to_kind(Kind::Double), &w.to_kind(Kind::Double), None).is_none());
        assert!(linear(&x, &w.transpose(0, 1).contiguous().transpose(0, 1), None).is_none());
        assert!(linear(&x, &Tensor::randn([8, 15], (Kind::Float, Device::Cpu)), None).is_none());
        let wrong_bias = Tensor::zeros([7], (Kind::Float, Device::Cpu));
        assert!(linear(&x, &w, Some(&wrong_bias)).is_none());
    }
}
