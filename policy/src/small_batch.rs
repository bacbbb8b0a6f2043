//! A CPU fast path for `y = x W^T + b` when `x` has a few rows: the weight products of a
//! sampling step, one row per sequence.
//!
//! Why it exists: at a handful of rows, libtorch's float32 `linear` (MKL's sgemm) spends about
//! half its time packing `W` into its panel layout, on every call: it reads `W`, writes the
//! packed copy and reads that again. Here `W` is read once, in place (row-major `[N, K]`, as the model stores it), two rows at a time,
//! each pair multiplied with up to eight rows of `x` held in registers (AVX-512). On the 2-vCPU
//! Intel machine of BENCHMARKS.md the 32 products of a `small` decode step at 8 rows take
//! about 2.5 ms here against 4.5 ms through `linear` (issue #4).
//!
//! Threads: the rows of `W` are split over libtorch's own intra-op threads (its OpenMP team,
//! through libgomp's `GOMP_parallel`, which `#pragma omp parallel` compiles to), so no second
//! pool competes with libtorch's for the cores, and the team is already awake between calls.
//! A new team of threads per call (e.g. rayon's `scope` from outside its pool) costs about
//! 0.1 ms a call, more than the work.
//!
//! What it is not: a general matrix product. It applies only where it is faster and exact to
//! float32 rounding: CPU, float32, contiguous `W`, at most [`MAX_ROWS`] rows, a CPU with
//! AVX-512F, and libtorch's threads from libgomp (or one thread). Everywhere else
//! [`linear`] returns `None` and the caller uses libtorch. It records no autograd graph:
//! callers use it only for passes without gradients (sampling).

use tch::{Device, Kind, Tensor};

/// The most rows of `x` this path takes. Measured with `policy bench --config small` on the
/// machine of BENCHMARKS.md: sampling 1.5x as fast as through `linear` at 4 to 16 rows, 1.14x
/// at 24, the same at 32; at 64 rows MKL's packing pays for itself.
pub const MAX_ROWS: i64 = 24;

/// `x W^T + b` over the last dimension of `x` (`weight` is `[N, K]`, `bias` `[N]`), or `None`
/// where this path does not apply; see the module's doc.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Option<Tensor> {
    let kernel = kernel::available()?;
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
    if rows == 0 || rows > MAX_ROWS {
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

/// The raw-pointer part: the AVX-512 kernel and the OpenMP team it runs on.
#[allow(unsafe_code)]
mod kernel {
    use std::ffi::{c_int, c_uint, c_void};
    use std::sync::OnceLock;

    use tch::Tensor;

    type GompParallel =
        unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
    type OmpQuery = unsafe extern "C" fn() -> c_int;

    /// What this machine offers: AVX-512F, and libgomp's entry points if libtorch uses it.
    pub(super) struct Kernel {
        team: Option<(GompParallel, OmpQuery, OmpQuery)>,
    }

    /// The kernel, if this CPU has AVX-512F (looked up once).
    pub(super) fn available() -> Option<&'static Kernel> {
        static KERNEL: OnceLock<Option<Kernel>> = OnceLock::new();
        KERNEL.get_or_init(detect).as_ref()
    }

    #[cfg(target_arch = "x86_64")]
    fn detect() -> Option<Kernel> {
        if !std::is_x86_feature_detected!("avx512f") {
            return None;
        }
        // libgomp is loaded with libtorch_cpu (a dependency of this binary), so its symbols
        // are in the global scope.
        let symbol = |name: &std::ffi::CStr| {
            // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks the name up.
            let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        let team = match (
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
        };
        Some(Kernel { team })
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn detect() -> Option<Kernel> {
        None
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
        team: Option<(OmpQuery, OmpQuery)>,
    }

    impl Kernel {
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
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `available` returned this kernel only where the CPU has AVX-512F.
        unsafe {
            avx512::columns(job, start, end)
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (job, start, end);
    }

    #[cfg(target_arch = "x86_64")]
    mod avx512 {
        use std::arch::x86_64::*;

        use super::Job;

        /// Lanes of a 512-bit register.
        const LANES: usize = 16;
        /// Rows of `x` multiplied with each pair of `W`'s rows at once (8 x 2 accumulators).
        const ROW_BLOCK: usize = 8;
        /// How many rows of `W` ahead the first row block prefetches.
        const PREFETCH_ROWS: usize = 4;

        #[target_feature(enable = "avx512f")]
        pub(super) unsafe fn columns(job: &Job, start: usize, end: usize) {
            let mut j = start;
            while j + 2 <= end {
                // SAFETY: rows j and j + 1 of W exist (j + 2 <= end <= n).
                unsafe { weight_rows::<2>(job, j) };
                j += 2;
            }
            if j < end {
                // SAFETY: row j of W exists.
                unsafe { weight_rows::<1>(job, j) };
            }
        }

        /// Output columns `j..j + NR` for every row of `x`, a block of rows at a time (the
        /// `NR` rows of `W` stay in L1 between blocks).
        #[target_feature(enable = "avx512f")]
        unsafe fn weight_rows<const NR: usize>(job: &Job, j: usize) {
            let mut m = 0;
            while m < job.rows {
                let prefetch = m == 0;
                // SAFETY: rows m.. of x exist; the block functions read at most `rows - m`.
                unsafe {
                    match job.rows - m {
                        1 => block::<1, NR>(job, m, j, prefetch),
                        2 => block::<2, NR>(job, m, j, prefetch),
                        3 => block::<3, NR>(job, m, j, prefetch),
                        4 => block::<4, NR>(job, m, j, prefetch),
                        5 => block::<5, NR>(job, m, j, prefetch),
                        6 => block::<6, NR>(job, m, j, prefetch),
                        7 => block::<7, NR>(job, m, j, prefetch),
                        _ => block::<ROW_BLOCK, NR>(job, m, j, prefetch),
                    }
                }
                m += ROW_BLOCK;
            }
        }

        /// `MR` rows of `x` (from `m`) times `NR` rows of `W` (from `j`): MR x NR dot products
        /// of length k, 16 lanes at a time, the last partial group under a mask.
        #[target_feature(enable = "avx512f")]
        unsafe fn block<const MR: usize, const NR: usize>(
            job: &Job,
            m: usize,
            j: usize,
            prefetch: bool,
        ) {
            let k = job.k;
            let whole = k / LANES * LANES;
            let mut acc = [[_mm512_setzero_ps(); NR]; MR];
            // SAFETY (every access below): x rows m..m + MR and W rows j..j + NR exist and have
            // k floats each; loads stop at `whole`, and the tail is masked to k - whole lanes.
            // Prefetches are hints and never fault; they stay inside W anyway.
            unsafe {
                let x = job.x.add(m * k);
                let w = job.w.add(j * k);
                let ahead = prefetch && j + PREFETCH_ROWS + NR <= job.n;
                let mut c = 0;
                while c < whole {
                    let mut wv = [_mm512_setzero_ps(); NR];
                    for (r, v) in wv.iter_mut().enumerate() {
                        *v = _mm512_loadu_ps(w.add(r * k + c));
                        if ahead {
                            let next = w.add((PREFETCH_ROWS + r) * k + c);
                            _mm_prefetch::<_MM_HINT_T0>(next as *const i8);
                        }
                    }
                    for (i, row) in acc.iter_mut().enumerate() {
                        let xv = _mm512_loadu_ps(x.add(i * k + c));
                        for (a, &wr) in row.iter_mut().zip(&wv) {
                            *a = _mm512_fmadd_ps(wr, xv, *a);
                        }
                    }
                    c += LANES;
                }
                if c < k {
                    let mask: __mmask16 = (1u16 << (k - c)) - 1;
                    let mut wv = [_mm512_setzero_ps(); NR];
                    for (r, v) in wv.iter_mut().enumerate() {
                        *v = _mm512_maskz_loadu_ps(mask, w.add(r * k + c));
                    }
                    for (i, row) in acc.iter_mut().enumerate() {
                        let xv = _mm512_maskz_loadu_ps(mask, x.add(i * k + c));
                        for (a, &wr) in row.iter_mut().zip(&wv) {
                            *a = _mm512_fmadd_ps(wr, xv, *a);
                        }
                    }
                }
                for (i, row) in acc.iter().enumerate() {
                    for (r, &a) in row.iter().enumerate() {
                        let bias = if job.bias.is_null() { 0.0 } else { *job.bias.add(j + r) };
                        *job.y.add((m + i) * job.n + j + r) = _mm512_reduce_add_ps(a) + bias;
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

    #[test]
    fn matches_a_float64_product_at_every_row_count_and_shape() {
        if kernel::available().is_none() {
            eprintln!("SKIPPED: this CPU has no AVX-512F, so the small-batch kernel is never used");
            return;
        }
        tch::manual_seed(7);
        let _guard = tch::no_grad_guard();
        // k: whole 16-lane groups, a masked tail, only a tail; n: even, odd, one row.
        for &(k, n) in &[(64, 96), (100, 37), (7, 5), (1408, 512), (512, 1), (33, 2)] {
            let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu));
            let bias = Tensor::randn([n], (Kind::Float, Device::Cpu));
            for rows in 1..=MAX_ROWS {
                let x = Tensor::randn([rows, 1, k], (Kind::Float, Device::Cpu));
                for b in [None, Some(&bias)] {
                    let got = linear(&x, &w, b).expect("the fast path applies");
                    assert_eq!(got.size(), [rows, 1, n]);
                    let want = reference(&x, &w, b);
                    // float32 rounding of a k-term sum of products of unit normals.
                    let tolerance = 1e-6 * (k as f64).sqrt() * 8.0;
                    let error = max_error(&got, &want);
                    assert!(error < tolerance, "k={k} n={n} rows={rows}: error {error}");
                }
            }
        }
    }

    #[test]
    fn splits_the_work_over_libtorchs_threads_without_changing_the_result() {
        if kernel::available().is_none() {
            eprintln!("SKIPPED: this CPU has no AVX-512F, so the small-batch kernel is never used");
            return;
        }
        let _guard = tch::no_grad_guard();
        let w = Tensor::randn([301, 96], (Kind::Float, Device::Cpu));
        let x = Tensor::randn([5, 96], (Kind::Float, Device::Cpu));
        let threads = tch::get_num_threads();
        tch::set_num_threads(1);
        let one = linear(&x, &w, None).expect("the fast path applies");
        tch::set_num_threads(3);
        let three = linear(&x, &w, None).expect("the fast path applies");
        tch::set_num_threads(threads);
        // Each column is one thread's dot product either way: the same bits.
        assert!(one.equal(&three));
        assert!(max_error(&one, &reference(&x, &w, None)) < 1e-4);
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
