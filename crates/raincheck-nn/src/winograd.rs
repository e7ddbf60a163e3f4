//! 3x3, stride-1 convolution by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, 2016),
//! on the CPU.
//!
//! Each 4x4 block of output pixels (a *tile*) is computed from the 6x6 input patch under it: the
//! patch and the filter are transformed (`V = Bᵀ d B`, `U = G g Gᵀ`), multiplied element-wise and
//! summed over input channels, then transformed back (`Y = Aᵀ M A`). The sum over channels at
//! each of the 36 positions ξ is a matrix product `M_ξ = U_ξ · V_ξ` (`cout × cin` by `cin ×
//! tiles`), so the multiplications drop from 144 to 36 per tile and channel pair: 4x fewer than
//! the direct (im2col) product. The points are 0, ±1, ±2 and ∞ (the paper's matrices); rounding
//! differs from the direct sum by up to ~2e-5 of the outputs' scale at 256 input channels (the
//! transforms' large coefficients; about 20x the direct f32 sum's error against an f64 sum,
//! measured on the tests' data; tests: ≤ 3e-5).
//!
//! A layer's tiles are cut into blocks (part of one tile row, or several whole tile rows) so that
//! one position's transformed input (`cin × tiles`) stays near 128 KB. Each block runs three
//! parallel passes: the input transform (by input channel), the 36 products (by position, with
//! our own AVX2 6x16 register block reading the transforms' layouts directly, no packing), and
//! the output transform (by output channel). The weight gradient runs the same passes with the
//! output gradient's transform `A dY Aᵀ` and sums each position's product over the blocks in
//! order, so it does not depend on the thread count.

use super::{grown, with_scratch, OutPtr};
use rayon::prelude::*;

/// `(b, c, h, w)` of the input.
pub(super) type Dims = (usize, usize, usize, usize);

/// Defines `fn NAME(args)` that runs `BODY(args)` (an `#[inline(always)]` function) compiled for
/// AVX2 + FMA where the CPU has them, and as built otherwise: the body is inlined into a
/// `#[target_feature]` copy. (A closure passed to one generic AVX2 wrapper was not inlined and
/// ran unvectorised: conv6 forward 31.5 → 50.9 ms.)
macro_rules! avx2_multiversion {
    ($(#[$doc:meta])* fn $name:ident => $body:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                return unsafe { avx2($($arg),*) };
            }
            $body($($arg),*)
        }
    };
}

/// Transformed positions per tile.
const XI: usize = 36;
/// Rows and columns of the products' register block.
const MR: usize = 6;
const NR: usize = 16;
/// Values of one position's transformed input per block (128 KB).
const PANEL_FLOATS: usize = 1 << 15;

/// Whether Winograd's F(4x4, 3x3) is used for a layer: 3x3 kernel, stride 1, padding ≤ 2, and
/// enough channels on both sides for the transforms to cost less than the multiplications they
/// save.
pub(super) fn applies(k: usize, stride: usize, pad: usize, cin: usize, cout: usize) -> bool {
    k == 3 && stride == 1 && pad <= 2 && cin >= 16 && cout >= 16
}

avx2_multiversion! {
    /// `dW = Gᵀ dU G` for one output channel (`du`: its 36 rows of `cin_p ≥ cin` values) into
    /// its filters `dw` (`cin x 9`), eight input channels at a time.
    fn untransform_filter => untransform_filter_body(du: &[f32], cin: usize, dw: &mut [f32])
}

#[inline(always)]
fn untransform_filter_body(du: &[f32], cin: usize, dw: &mut [f32]) {
    let cin_p = du.len() / XI;
    for c0 in (0..cin).step_by(8) {
        let taps = separable(|i, j| load(&du[(i * 6 + j) * cin_p..][..cin_p], c0), gt3l);
        for (r, row) in taps.iter().enumerate() {
            for (c, v) in row.iter().enumerate() {
                for (l, &v) in v.iter().enumerate().take(cin - c0) {
                    dw[(c0 + l) * 9 + r * 3 + c] = v;
                }
            }
        }
    }
}

/// `Gᵀ v` on eight lanes: the adjoint of [`g6l`]'s `G g`.
#[inline(always)]
fn gt3l(v: [L; 6]) -> [L; 3] {
    const SIXTH: f32 = 1.0 / 6.0;
    let s12 = add(v[1], v[2]);
    let s34 = add(v[3], v[4]);
    [
        add(
            sub(scale(0.25, v[0]), scale(SIXTH, s12)),
            scale(1.0 / 24.0, s34),
        ),
        add(
            scale(SIXTH, sub(v[2], v[1])),
            scale(1.0 / 12.0, sub(v[3], v[4])),
        ),
        add(scale(SIXTH, sub(s34, s12)), v[5]),
    ]
}

/// `p + n` (a closure calling this captures the whole `OutPtr`, which is `Sync`, rather than
/// its raw pointer field).
fn ptr_at(p: OutPtr, n: usize) -> *mut f32 {
    p.0.wrapping_add(n)
}

/// The 36 transformed filters `U_ξ = (G g Gᵀ)_ξ` into `u`, laid out `(cout, 36, cin)` (the
/// products' left operand; the register block reads six output channels' rows at a time).
fn transform_weights(weight: &[f32], cout: usize, cin: usize, u: &mut Vec<f32>) {
    let up = OutPtr(grown(u, XI * cout * cin).as_mut_ptr());
    (0..cout).into_par_iter().for_each(|co| {
        with_scratch(|s: &mut Scratch| {
            // SAFETY: output channel co's 36 rows of U are written by this task only.
            let rows =
                unsafe { std::slice::from_raw_parts_mut(ptr_at(up, co * XI * cin), XI * cin) };
            transform_filter(&weight[co * cin * 9..][..cin * 9], cin, rows, &mut s.rows)
        })
    });
}

avx2_multiversion! {
    /// `U = G g Gᵀ` for one output channel's filters (`w`, `cin x 9`) into its 36 rows of U,
    /// eight input channels at a time.
    fn transform_filter => transform_filter_body(
        w: &[f32],
        cin: usize,
        out: &mut [f32],
        taps: &mut Vec<f32>,
    )
}

#[inline(always)]
fn transform_filter_body(w: &[f32], cin: usize, out: &mut [f32], taps: &mut Vec<f32>) {
    // The 9 taps as rows of input channels (room for a whole last lane group).
    let len = cin.next_multiple_of(8);
    taps.resize(9 * len, 0.0);
    for (ci, g) in w.chunks_exact(9).enumerate() {
        for (k, &v) in g.iter().enumerate() {
            taps[k * len + ci] = v;
        }
    }
    for c0 in (0..cin).step_by(8) {
        let take = (cin - c0).min(8);
        let u = separable(|i, j| load(&taps[(i * 3 + j) * len..], c0), g6l);
        for (i, row) in u.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                store(&mut out[(i * 6 + j) * cin..][..cin], c0, v, take);
            }
        }
    }
}

/// `G g` for one filter column or row, on eight lanes: `G = [[¼, 0, 0], [−⅙, −⅙, −⅙],
/// [−⅙, ⅙, −⅙], [1/24, 1/12, ⅙], [1/24, −1/12, ⅙], [0, 0, 1]]`.
#[inline(always)]
fn g6l([a, b, c]: [L; 3]) -> [L; 6] {
    const SIXTH: f32 = 1.0 / 6.0;
    let ac24 = add(scale(1.0 / 24.0, a), scale(SIXTH, c));
    let b12 = scale(1.0 / 12.0, b);
    let ac = add(a, c);
    [
        scale(0.25, a),
        scale(-SIXTH, add(ac, b)),
        scale(-SIXTH, sub(ac, b)),
        add(ac24, b12),
        sub(ac24, b12),
        c,
    ]
}

/// A block of tiles: tile rows `ty`, tile columns `tx` (all of them when it spans several rows).
#[derive(Clone, Copy, Debug)]
struct Block {
    image: usize,
    ty: (usize, usize),
    tx: (usize, usize),
}

impl Block {
    fn tiles(&self) -> usize {
        (self.ty.1 - self.ty.0) * (self.tx.1 - self.tx.0)
    }
}

/// Splits every image's `nty x ntx` tiles into blocks of at most `cap` tiles, of even sizes.
fn blocks(b: usize, nty: usize, ntx: usize, cap: usize) -> Vec<Block> {
    let mut out = Vec::new();
    for image in 0..b {
        if ntx >= cap {
            let width = ntx.div_ceil(ntx.div_ceil(cap));
            for ty in 0..nty {
                for tx0 in (0..ntx).step_by(width) {
                    out.push(Block {
                        image,
                        ty: (ty, ty + 1),
                        tx: (tx0, (tx0 + width).min(ntx)),
                    });
                }
            }
        } else {
            let rows = nty.div_ceil(nty.div_ceil((cap / ntx).max(1)));
            for ty0 in (0..nty).step_by(rows) {
                out.push(Block {
                    image,
                    ty: (ty0, (ty0 + rows).min(nty)),
                    tx: (0, ntx),
                });
            }
        }
    }
    out
}

/// A layer's tiling: output size, tile grid, blocks and their padded width (`np`, the
/// transforms' row length: a multiple of the register block's 16 columns).
struct Tiling {
    oh: usize,
    ow: usize,
    blocks: Vec<Block>,
    np: usize,
}

fn tiling(b: usize, h: usize, w: usize, pad: usize, channels: usize) -> Tiling {
    assert!(pad <= 2 && h + 2 * pad >= 3 && w + 2 * pad >= 3);
    let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
    let (nty, ntx) = (oh.div_ceil(4), ow.div_ceil(4));
    let cap = (PANEL_FLOATS / channels).clamp(NR, 1024);
    let blocks = blocks(b, nty, ntx, cap);
    let np = blocks
        .iter()
        .map(Block::tiles)
        .max()
        .unwrap_or(0)
        .next_multiple_of(NR);
    Tiling { oh, ow, blocks, np }
}

/// The calling thread's transformed filters `U` `(cout, 36, cin)`, kept between calls
/// (`grown`).
#[derive(Default)]
struct Buffers {
    u: Vec<f32>,
}

/// One block's transforms, kept between calls (`grown`): `v` `(36, np / 16, cin, 16)` (each
/// position's transformed input as panels of 16 tiles: the products' right operand,
/// contiguous; positions `v_stride` apart), `m` `(cout, 36, np)` (the products, or the output
/// gradient's transform).
#[derive(Default)]
struct BlockBuffers {
    v: Vec<f32>,
    m: Vec<f32>,
}

/// Per-thread staging rows of the transforms and the weight gradient's repacked input.
#[derive(Default)]
struct Scratch {
    rows: Vec<f32>,
    vt: Vec<f32>,
}

/// Values from one position's panels of V to the next: `cin · np` and one cache line, so that
/// a channel's 36 values of a tile do not all fall in one L1 cache set (`cin · np` is a multiple
/// of 4 KB for the 256-channel layers).
fn v_stride(cin: usize, np: usize) -> usize {
    cin * np + 16
}

/// Where the input transform of channel `c` goes in `v` (`(36, np / 16, channels, 16)`).
#[derive(Clone, Copy)]
struct Panels {
    buf: OutPtr,
    channels: usize,
    np: usize,
    c: usize,
}

impl Panels {
    /// Offset of tile `t` at position `xi`.
    #[inline(always)]
    fn at(&self, xi: usize, t: usize) -> usize {
        xi * v_stride(self.channels, self.np) + (t / NR * self.channels + self.c) * NR + t % NR
    }

    /// Writes the first `take` lanes of `v` as tiles `t..` of position `xi`.
    ///
    /// # Safety
    /// `buf` holds `36 · v_stride(channels, np)` values, `t + take ≤ np`, and only this writer uses
    /// channel `c`.
    #[inline(always)]
    unsafe fn put(&self, xi: usize, t: usize, v: &L, take: usize) {
        let first = take.min(NR - t % NR);
        // SAFETY: as the caller promised; a group crossing a panel edge is split.
        unsafe {
            let dst = self.buf.0.add(self.at(xi, t));
            if first == 8 {
                dst.cast::<L>().write_unaligned(*v);
            } else {
                for (l, &x) in v[..first].iter().enumerate() {
                    *dst.add(l) = x;
                }
                let dst = self.buf.0.add(self.at(xi, t + first));
                for (l, &x) in v[first..take].iter().enumerate() {
                    *dst.add(l) = x;
                }
            }
        }
    }
}

/// `act(corr(x, weight) + bias)` with zero padding `pad` (≤ 2): `x` is `(b, cin, h, w)`,
/// `weight` `(cout, cin, 3, 3)`, the result `(b, cout, h + 2·pad − 2, w + 2·pad − 2)`.
pub(super) fn conv3x3(
    x: &[f32],
    (b, cin, h, w): Dims,
    weight: &[f32],
    cout: usize,
    bias: Option<&[f32]>,
    pad: usize,
    relu: bool,
) -> Vec<f32> {
    let Tiling { oh, ow, blocks, np } = tiling(b, h, w, pad, cin.max(cout));
    let mut out = vec![0f32; b * cout * oh * ow];
    let dst = OutPtr(out.as_mut_ptr());
    // Many blocks (small layers, several images): one task per block, its passes in turn;
    // few: the blocks in turn, each pass parallel.
    let outer = blocks.len() >= 2 * rayon::current_num_threads();
    let inner = if outer { usize::MAX } else { 1 };
    with_scratch(|bufs: &mut Buffers| {
        transform_weights(weight, cout, cin, &mut bufs.u);
        let u = &bufs.u;
        let run = |blk: &Block, bb: &mut BlockBuffers| {
            let vp = OutPtr(grown(&mut bb.v, XI * v_stride(cin, np)).as_mut_ptr());
            let mp = OutPtr(grown(&mut bb.m, XI * cout * np).as_mut_ptr());
            input_pass(x, (cin, h, w), pad, blk, vp, (np, inner));
            (0..XI).into_par_iter().with_min_len(inner).for_each(|xi| {
                let (vp, mp) = (vp, mp);
                for g in 0..cout.div_ceil(MR) {
                    let rows = MR.min(cout - g * MR);
                    for jg in (0..np).step_by(NR) {
                        // SAFETY: U's rows (6g.., ξ) (cin values each, 36·cin apart), V_ξ's
                        // panel jg (cin x 16) and M's rows (6g.., ξ) (36·np apart) are in
                        // bounds; this task alone writes M's position ξ.
                        unsafe {
                            block_product(
                                rows,
                                cin,
                                (u.as_ptr().add((g * MR * XI + xi) * cin), XI * cin, 1),
                                (vp.0.add(xi * v_stride(cin, np) + jg * cin), NR),
                                (mp.0.add((g * MR * XI + xi) * np + jg), XI * np),
                                false,
                            );
                        }
                    }
                }
            });
            (0..cout)
                .into_par_iter()
                .with_min_len(inner)
                .for_each(|co| {
                    let (d, mp) = (dst, mp);
                    // SAFETY: M is complete (the products above have joined); only read here.
                    let m = unsafe { std::slice::from_raw_parts(mp.0.add(co * XI * np), XI * np) };
                    // SAFETY: this task writes only channel co's pixels of this block's tiles.
                    let plane = unsafe {
                        std::slice::from_raw_parts_mut(
                            d.0.add((blk.image * cout + co) * oh * ow),
                            oh * ow,
                        )
                    };
                    let b = bias.map_or(0.0, |b| b[co]);
                    with_scratch(|s: &mut Scratch| {
                        transform_output(m, np, (oh, ow), blk, (b, relu), plane, &mut s.rows)
                    });
                });
        };
        if outer {
            blocks
                .par_iter()
                .for_each(|blk| with_scratch(|bb: &mut BlockBuffers| run(blk, bb)));
        } else {
            with_scratch(|bb: &mut BlockBuffers| blocks.iter().for_each(|blk| run(blk, bb)));
        }
    });
    out
}

/// The input transform of every channel of `blk`'s image into `vp` (parallel over channels, at
/// least `min_len` per task: `usize::MAX` runs them in turn).
fn input_pass(
    x: &[f32],
    (cin, h, w): (usize, usize, usize),
    pad: usize,
    blk: &Block,
    vp: OutPtr,
    (np, min_len): (usize, usize),
) {
    let image = &x[blk.image * cin * h * w..][..cin * h * w];
    (0..cin)
        .into_par_iter()
        .with_min_len(min_len)
        .for_each(|ci| {
            let plane = &image[ci * h * w..][..h * w];
            let out = Panels {
                buf: vp,
                channels: cin,
                np,
                c: ci,
            };
            with_scratch(|s: &mut Scratch| {
                transform_input(plane, (h, w), pad, blk, out, &mut s.rows)
            });
        });
}

/// The weight gradient of [`conv3x3`]: `dW` `(cout, cin, 3, 3)` from the input `x` and the
/// output gradient `dy` `(b, cout, oh, ow)`.
///
/// The adjoint of the forward transforms: with `V = Bᵀ d B` (the forward's input transform) and
/// `D = A dY Aᵀ` per tile, `dU_ξ = Σ_tiles D_ξ · V_ξᵀ` (36 products `cout × tiles` by `tiles ×
/// cin`, each summed over the blocks in order) and `dW = Gᵀ dU G`.
pub(super) fn grad_weight3x3(
    x: &[f32],
    (b, cin, h, w): Dims,
    dy: &[f32],
    cout: usize,
    pad: usize,
) -> Vec<f32> {
    let Tiling { oh, ow, blocks, np } = tiling(b, h, w, pad, cin.max(cout));
    let cin_p = cin.next_multiple_of(NR);
    // dU (cout, 36, cin_p), summed over the blocks.
    let mut du = vec![0f32; XI * cout * cin_p];
    let dup = OutPtr(du.as_mut_ptr());
    with_scratch(|bufs: &mut BlockBuffers| {
        let vp = OutPtr(grown(&mut bufs.v, XI * v_stride(cin, np)).as_mut_ptr());
        let mp = OutPtr(grown(&mut bufs.m, XI * cout * np).as_mut_ptr());
        for blk in &blocks {
            input_pass(x, (cin, h, w), pad, blk, vp, (np, 1));
            let grads = &dy[blk.image * cout * oh * ow..][..cout * oh * ow];
            (0..cout).into_par_iter().for_each(|co| {
                let plane = &grads[co * oh * ow..][..oh * ow];
                // SAFETY: channel co's 36 rows of D are written by this task only.
                let d =
                    unsafe { std::slice::from_raw_parts_mut(ptr_at(mp, co * XI * np), XI * np) };
                with_scratch(|s: &mut Scratch| {
                    transform_grad(plane, (oh, ow), blk, d, &mut s.rows)
                });
            });
            (0..XI).into_par_iter().for_each(|xi| {
                let (vp, mp, dup) = (vp, mp, dup);
                with_scratch(|s: &mut Scratch| {
                    // V_ξᵀ as panels of 16 input channels (np x 16 each, zero past cin): the
                    // products' right operand.
                    let vt = grown(&mut s.vt, np * cin_p);
                    // SAFETY: V is complete (its pass has joined); only read here.
                    let v = unsafe {
                        std::slice::from_raw_parts(vp.0.add(xi * v_stride(cin, np)), np * cin)
                    };
                    repack(v, (cin, np), vt);
                    for g in 0..cout.div_ceil(MR) {
                        let rows = MR.min(cout - g * MR);
                        for ig in (0..cin_p).step_by(NR) {
                            // SAFETY: D's rows (6g.., ξ) (np values each, 36·np apart), V_ξᵀ's
                            // panel ig and dU's rows (6g.., ξ) (36·cin_p apart) are in bounds;
                            // this task alone writes dU's position ξ.
                            unsafe {
                                block_product(
                                    rows,
                                    np,
                                    (mp.0.add((g * MR * XI + xi) * np), XI * np, 1),
                                    (vt.as_ptr().add(ig * np), NR),
                                    (dup.0.add((g * MR * XI + xi) * cin_p + ig), XI * cin_p),
                                    true,
                                );
                            }
                        }
                    }
                });
            });
        }
    });
    let mut dw = vec![0f32; cout * cin * 9];
    dw.par_chunks_mut(cin * 9)
        .zip(du.par_chunks(XI * cin_p))
        .for_each(|(dw, du)| untransform_filter(du, cin, dw));
    dw
}

/// One position's transformed input from panels of 16 tiles (`src`: `np / 16` panels of `c x
/// 16`) to panels of 16 channels (`dst`: `c / 16` (rounded up) panels of `np x 16`, zero past
/// `c`).
fn repack(src: &[f32], (c, np): (usize, usize), dst: &mut [f32]) {
    let cp = c.next_multiple_of(NR);
    for (jp, panel) in src.chunks_exact(c * NR).enumerate() {
        for ch in 0..cp {
            let out = &mut dst[(ch / NR) * np * NR + jp * NR * NR + ch % NR..];
            if ch < c {
                for (l, &v) in panel[ch * NR..][..NR].iter().enumerate() {
                    out[l * NR] = v;
                }
            } else {
                for l in 0..NR {
                    out[l * NR] = 0.0;
                }
            }
        }
    }
}

/// `C (rows x 16) [+]= A (rows x k) · B (k x 16)`, `rows ≤ 6`: `A` given as (pointer, row
/// stride, column stride), `B` and `C` as (pointer, row stride).
///
/// # Safety
/// The pointers must be valid for the matrices they describe, and `C` must not alias `A` or `B`
/// or be written by another thread meanwhile.
unsafe fn block_product(
    rows: usize,
    k: usize,
    a: (*const f32, usize, usize),
    b: (*const f32, usize),
    c: (*mut f32, usize),
    accumulate: bool,
) {
    macro_rules! dispatch {
        ($($r:literal),*) => {
            match rows {
                // SAFETY: `rows` is one of the listed block sizes and the caller's pointers cover that block.
                $($r => unsafe { block_product_r::<$r>(k, a, b, c, accumulate) },)*
                _ => unreachable!("register block rows {rows}"),
            }
        };
    }
    dispatch!(1, 2, 3, 4, 5, 6)
}

/// [`block_product`] for `R` rows: the AVX2 + FMA register block (`R x 2` vectors of 8
/// accumulators) where the CPU has them, plain loops otherwise.
///
/// # Safety
/// As [`block_product`].
unsafe fn block_product_r<const R: usize>(
    k: usize,
    (a, ars, acs): (*const f32, usize, usize),
    (b, ldb): (*const f32, usize),
    (c, ldc): (*mut f32, usize),
    accumulate: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU has AVX2 and FMA; the pointers as the caller promised.
        return unsafe { avx2::block::<R>(k, (a, ars, acs), (b, ldb), (c, ldc), accumulate) };
    }
    let mut acc = [[0f32; NR]; R];
    for (i, row) in acc.iter_mut().enumerate() {
        if accumulate {
            // SAFETY: C's rows are valid (caller).
            row.copy_from_slice(unsafe { std::slice::from_raw_parts(c.add(i * ldc), NR) });
        }
    }
    for p in 0..k {
        // SAFETY: B's row p and A's column p are valid (caller).
        let brow = unsafe { std::slice::from_raw_parts(b.add(p * ldb), NR) };
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: A's element (i, p) is valid (caller).
            let av = unsafe { *a.add(i * ars + p * acs) };
            for (r, &bv) in row.iter_mut().zip(brow) {
                *r += av * bv;
            }
        }
    }
    for (i, row) in acc.iter().enumerate() {
        // SAFETY: C's rows are valid and ours alone (caller).
        unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), NR) }.copy_from_slice(row);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// The `R x 16` register block: per step of `k`, two vectors of `B`'s row, `R` broadcasts
    /// of `A`'s column, `2R` fused multiply-adds.
    ///
    /// # Safety
    /// AVX2 + FMA, and the pointers as for `block_product`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn block<const R: usize>(
        k: usize,
        (a, ars, acs): (*const f32, usize, usize),
        (b, ldb): (*const f32, usize),
        (c, ldc): (*mut f32, usize),
        accumulate: bool,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; R];
        if accumulate {
            for (i, v) in acc.iter_mut().enumerate() {
                // SAFETY: C's row i holds 16 values (caller).
                unsafe {
                    v[0] = _mm256_loadu_ps(c.add(i * ldc));
                    v[1] = _mm256_loadu_ps(c.add(i * ldc + 8));
                }
            }
        }
        let (mut ap, mut bp) = (a, b);
        for _ in 0..k {
            // SAFETY: B's row and A's column at this step are in bounds (caller).
            unsafe {
                let b0 = _mm256_loadu_ps(bp);
                let b1 = _mm256_loadu_ps(bp.add(8));
                for (i, v) in acc.iter_mut().enumerate() {
                    let av = _mm256_broadcast_ss(&*ap.add(i * ars));
                    v[0] = _mm256_fmadd_ps(av, b0, v[0]);
                    v[1] = _mm256_fmadd_ps(av, b1, v[1]);
                }
                ap = ap.add(acs);
                bp = bp.add(ldb);
            }
        }
        for (i, v) in acc.iter().enumerate() {
            // SAFETY: C's row i holds 16 values, ours alone (caller).
            unsafe {
                _mm256_storeu_ps(c.add(i * ldc), v[0]);
                _mm256_storeu_ps(c.add(i * ldc + 8), v[1]);
            }
        }
    }
}

/// Eight lanes: the transforms run over 8 consecutive tiles at a time.
type L = [f32; 8];

/// `F X Fᵀ` for a 1-D transform `f` (`I` values to `O`) of the `I x I` values `x(i, j)` (row
/// `i`, column `j`): `f` down each column, then across each resulting row; `out[i][j]`. Every
/// transform here (`Bᵀ d B`, `Aᵀ M A`, `G g Gᵀ` and the gradients' adjoints) is one. (Loops,
/// not `array::from_fn`: that was not inlined into the AVX2 builds.)
#[inline(always)]
fn separable<const I: usize, const O: usize>(
    x: impl Fn(usize, usize) -> L,
    f: impl Fn([L; I]) -> [L; O],
) -> [[L; O]; O] {
    let mut cols = [[[0f32; 8]; O]; I];
    for (j, col) in cols.iter_mut().enumerate() {
        let mut v = [[0f32; 8]; I];
        for (i, v) in v.iter_mut().enumerate() {
            *v = x(i, j);
        }
        *col = f(v);
    }
    let mut out = [[[0f32; 8]; O]; O];
    for (i, row) in out.iter_mut().enumerate() {
        let mut v = [[0f32; 8]; I];
        for (j, v) in v.iter_mut().enumerate() {
            *v = cols[j][i];
        }
        *row = f(v);
    }
    out
}

#[inline(always)]
fn add(a: L, b: L) -> L {
    let mut r = [0f32; 8];
    for l in 0..8 {
        r[l] = a[l] + b[l];
    }
    r
}

#[inline(always)]
fn sub(a: L, b: L) -> L {
    let mut r = [0f32; 8];
    for l in 0..8 {
        r[l] = a[l] - b[l];
    }
    r
}

#[inline(always)]
fn scale(s: f32, a: L) -> L {
    let mut r = [0f32; 8];
    for l in 0..8 {
        r[l] = s * a[l];
    }
    r
}

#[inline(always)]
fn load(src: &[f32], at: usize) -> L {
    *<&[f32; 8]>::try_from(&src[at..at + 8]).expect("8 lanes")
}

/// Writes the first `take` lanes of `v` at `dst[at..]` (whole groups as one 32-byte store).
#[inline(always)]
fn store(dst: &mut [f32], at: usize, v: &L, take: usize) {
    if take == 8 {
        *<&mut [f32; 8]>::try_from(&mut dst[at..at + 8]).expect("8 lanes") = *v;
    } else {
        dst[at..at + take].copy_from_slice(&v[..take]);
    }
}

/// `Bᵀ d` for one column or row of six: `Bᵀ = [[4, 0, −5, 0, 1, 0], [0, −4, −4, 1, 1, 0],
/// [0, 4, −4, −1, 1, 0], [0, −2, −1, 2, 1, 0], [0, 2, −1, −2, 1, 0], [0, 4, 0, −5, 0, 1]]`.
#[inline(always)]
fn bt6(d: [L; 6]) -> [L; 6] {
    let a = sub(d[4], scale(4.0, d[2]));
    let b = sub(d[3], scale(4.0, d[1]));
    let c = sub(d[4], d[2]);
    let e = scale(2.0, sub(d[3], d[1]));
    [
        add(sub(scale(4.0, d[0]), scale(5.0, d[2])), d[4]),
        add(a, b),
        sub(a, b),
        add(c, e),
        sub(c, e),
        add(sub(scale(4.0, d[1]), scale(5.0, d[3])), d[5]),
    ]
}

/// `Aᵀ m` for one column or row of six: `Aᵀ = [[1, 1, 1, 1, 1, 0], [0, 1, −1, 2, −2, 0],
/// [0, 1, 1, 4, 4, 0], [0, 1, −1, 8, −8, 1]]`.
#[inline(always)]
fn at4(m: [L; 6]) -> [L; 4] {
    let s12 = add(m[1], m[2]);
    let d12 = sub(m[1], m[2]);
    let s34 = add(m[3], m[4]);
    let d34 = sub(m[3], m[4]);
    [
        add(add(m[0], s12), s34),
        add(d12, scale(2.0, d34)),
        add(s12, scale(4.0, s34)),
        add(add(d12, scale(8.0, d34)), m[5]),
    ]
}

/// `A g`: the adjoint of [`at4`].
#[inline(always)]
fn a6(g: [L; 4]) -> [L; 6] {
    let e = add(g[0], g[2]);
    let o = add(g[1], g[3]);
    let e4 = add(g[0], scale(4.0, g[2]));
    let o8 = add(scale(2.0, g[1]), scale(8.0, g[3]));
    [g[0], add(e, o), sub(e, o), add(e4, o8), sub(e4, o8), g[3]]
}

/// Whether the AVX2 + FMA builds run on this CPU.
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::simd::has_avx2_fma()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Fills `phases` (4 arrays of `len`) with row `iy` of `plane` (`h x w`, zero outside) from
/// column `x0` on, split by column mod 4: `phases[r][e]` is column `x0 + 4e + r`.
#[inline(always)]
fn stage_row(
    plane: &[f32],
    (h, w): (usize, usize),
    iy: isize,
    x0: isize,
    phases: &mut [f32],
    len: usize,
) {
    let (lo, hi) = if iy < 0 || iy >= h as isize {
        (0, 0)
    } else {
        let lo = ((-x0).max(0) as usize).min(4 * len);
        (lo, ((w as isize - x0).max(0) as usize).clamp(lo, 4 * len))
    };
    // Zero outside columns lo..hi: phase r's value e is column 4e + r.
    for (r, p) in phases[..4 * len].chunks_exact_mut(len).enumerate() {
        let e_lo = (lo.saturating_sub(r)).div_ceil(4);
        let e_hi = (hi.saturating_sub(r)).div_ceil(4).max(e_lo);
        p[..e_lo].fill(0.0);
        p[e_hi..].fill(0.0);
    }
    if hi == lo {
        return;
    }
    let src = &plane[iy as usize * w..][..w];
    let at = |j: usize| (x0 + j as isize) as usize;
    // Single values up to a multiple of 4, then 32 at a time (8 per phase), then the rest.
    let mut j = lo;
    while j < hi && j % 4 != 0 {
        phases[(j % 4) * len + j / 4] = src[at(j)];
        j += 1;
    }
    while j + 32 <= hi {
        let chunk = <&[f32; 32]>::try_from(&src[at(j)..at(j) + 32]).expect("32 values");
        let e = j / 4;
        for r in 0..4 {
            let dst = <&mut [f32; 8]>::try_from(&mut phases[r * len + e..][..8]).expect("8");
            for l in 0..8 {
                dst[l] = chunk[4 * l + r];
            }
        }
        j += 32;
    }
    for j in j..hi {
        phases[(j % 4) * len + j / 4] = src[at(j)];
    }
}

avx2_multiversion! {
    /// `V = Bᵀ d B` for one input channel (`plane`, `h x w`) and every tile of `blk`, into the
    /// channel's share of V's panels (tile `t` of the block at column `t`; zero from the
    /// block's tiles to `np`).
    fn transform_input => transform_input_body(
        plane: &[f32],
        hw: (usize, usize),
        pad: usize,
        blk: &Block,
        out: Panels,
        rows: &mut Vec<f32>,
    )
}

#[inline(always)]
fn transform_input_body(
    plane: &[f32],
    hw: (usize, usize),
    pad: usize,
    blk: &Block,
    out: Panels,
    rows: &mut Vec<f32>,
) {
    let ntx = blk.tx.1 - blk.tx.0;
    let n = blk.tiles();
    // Six input rows, each as four column phases with room for whole lane groups (tile t reads
    // lanes t and t + 1).
    // Row 4ty + i lives in slot (4ty + i) mod 8: the next tile row reuses this one's last two.
    let len = ntx.next_multiple_of(8) + 8;
    rows.resize(32 * len, 0.0);
    let x0 = (4 * blk.tx.0) as isize - pad as isize;
    for (r, ty) in (blk.ty.0..blk.ty.1).enumerate() {
        for i in if r == 0 { 0..6 } else { 2..6 } {
            let iy = (4 * ty + i) as isize - pad as isize;
            let slot = (4 * ty + i) % 8;
            stage_row(
                plane,
                hw,
                iy,
                x0,
                &mut rows[4 * slot * len..][..4 * len],
                len,
            );
        }
        let t0 = r * ntx;
        let slots: [usize; 6] = std::array::from_fn(|i| (4 * ty + i) % 8);
        for t in (0..ntx).step_by(8) {
            let take = (ntx - t).min(8);
            let lanes =
                |i: usize, j: usize| load(&rows[(4 * slots[i] + j % 4) * len..][..len], t + j / 4);
            for (i, v) in separable(lanes, bt6).iter().enumerate() {
                for (j, v) in v.iter().enumerate() {
                    // SAFETY: V holds 36 · v_stride values, t0 + t + take ≤ n ≤ np, and
                    // channel c is this task's (`input_pass`).
                    unsafe { out.put(i * 6 + j, t0 + t, v, take) };
                }
            }
        }
    }
    let zero = [0f32; 8];
    for xi in 0..XI {
        for t in (n..out.np).step_by(8) {
            // SAFETY: as above.
            unsafe { out.put(xi, t, &zero, (out.np - t).min(8)) };
        }
    }
}

avx2_multiversion! {
    /// `D = A dY Aᵀ` for one output channel's gradient (`plane`, `oh x ow`; each tile's 4x4
    /// block, zero beyond the output) and every tile of `blk`, into the channel's 36 rows of
    /// `np` values (`out`; zero from the block's tiles to `np`).
    fn transform_grad => transform_grad_body(
        plane: &[f32],
        ohw: (usize, usize),
        blk: &Block,
        out: &mut [f32],
        rows: &mut Vec<f32>,
    )
}

#[inline(always)]
fn transform_grad_body(
    plane: &[f32],
    ohw: (usize, usize),
    blk: &Block,
    out: &mut [f32],
    rows: &mut Vec<f32>,
) {
    let ntx = blk.tx.1 - blk.tx.0;
    let n = blk.tiles();
    let np = out.len() / XI;
    let len = ntx.next_multiple_of(8);
    rows.resize(16 * len, 0.0);
    let x0 = (4 * blk.tx.0) as isize;
    for (r, ty) in (blk.ty.0..blk.ty.1).enumerate() {
        for i in 0..4 {
            let iy = (4 * ty + i) as isize;
            stage_row(plane, ohw, iy, x0, &mut rows[4 * i * len..][..4 * len], len);
        }
        let t0 = r * ntx;
        for t in (0..ntx).step_by(8) {
            let take = (ntx - t).min(8);
            let g = |i: usize, j: usize| load(&rows[(4 * i + j) * len..][..len], t);
            for (i, d) in separable(g, a6).iter().enumerate() {
                for (j, v) in d.iter().enumerate() {
                    store(&mut out[(i * 6 + j) * np..][..np], t0 + t, v, take);
                }
            }
        }
    }
    for row in out.chunks_exact_mut(np) {
        row[n..].fill(0.0);
    }
}

avx2_multiversion! {
    /// `Y = Aᵀ M A` + bias (then ReLU if asked) for one output channel (`m`: its 36 rows of
    /// `np` products) and every tile of `blk`, written into the channel's `plane` (`oh x ow`).
    fn transform_output => transform_output_body(
        m: &[f32],
        np: usize,
        ohw: (usize, usize),
        blk: &Block,
        act: (f32, bool),
        plane: &mut [f32],
        rows: &mut Vec<f32>,
    )
}

#[inline(always)]
fn transform_output_body(
    m: &[f32],
    np: usize,
    (oh, ow): (usize, usize),
    blk: &Block,
    (bias, relu): (f32, bool),
    plane: &mut [f32],
    rows: &mut Vec<f32>,
) {
    let ntx = blk.tx.1 - blk.tx.0;
    let span = 4 * ntx.next_multiple_of(8);
    rows.resize(4 * span, 0.0);
    let b = [bias; 8];
    for (r, ty) in (blk.ty.0..blk.ty.1).enumerate() {
        let t0 = r * ntx;
        for t in (0..ntx).step_by(8) {
            let take = (ntx - t).min(8);
            let ms = |xi: usize| -> L {
                let at = xi * np + t0 + t;
                if take == 8 {
                    load(m, at)
                } else {
                    let mut p = [0f32; 8];
                    p[..take].copy_from_slice(&m[at..at + take]);
                    p
                }
            };
            for (i, y) in separable(|i, j| ms(i * 6 + j), at4).iter().enumerate() {
                let dst = &mut rows[i * span + 4 * t..][..32];
                for (c, y) in y.iter().enumerate() {
                    let mut v = add(*y, b);
                    if relu {
                        for v in v.iter_mut() {
                            *v = v.max(0.0);
                        }
                    }
                    for l in 0..8 {
                        dst[4 * l + c] = v[l];
                    }
                }
            }
        }
        let ox = 4 * blk.tx.0;
        let cols = (4 * ntx).min(ow - ox);
        for i in 0..4 {
            let oy = 4 * ty + i;
            if oy < oh {
                plane[oy * ow + ox..][..cols].copy_from_slice(&rows[i * span..][..cols]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{max_abs_err, test_values as rand};
    use candle_core::{Device, Tensor};

    /// The weight gradient equals candle's (the gradient of `Σ probe · conv(x, w)`), for odd and
    /// even sizes, paddings 0–2, channel counts off the register block, several images and
    /// blocks.
    #[test]
    fn weight_gradient_matches_candle() {
        for &(b, cin, cout, h, w, pad) in &[
            (1, 16, 16, 8, 8, 1),
            (2, 17, 19, 7, 9, 1),
            (1, 16, 20, 5, 6, 0),
            (3, 20, 16, 3, 4, 2),
            (1, 32, 16, 40, 300, 1),
            (1, 256, 18, 9, 300, 0),
        ] {
            let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
            let x = rand(b * cin * h * w, 4);
            let wt = rand(cout * cin * 9, 5);
            let probe = rand(b * cout * oh * ow, 6);
            let ours = grad_weight3x3(&x, (b, cin, h, w), &probe, cout, pad);
            let dev = Device::Cpu;
            let xt = Tensor::from_vec(x, (b, cin, h, w), &dev).unwrap();
            let wv = candle_core::Var::from_vec(wt, (cout, cin, 3, 3), &dev).unwrap();
            let pt = Tensor::from_vec(probe, (b, cout, oh, ow), &dev).unwrap();
            let loss = (xt.conv2d(wv.as_tensor(), pad, 1, 1, 1).unwrap() * pt).unwrap();
            let grads = loss.sum_all().unwrap().backward().unwrap();
            let r: Vec<f32> = grads
                .get(wv.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let (d, scale) = max_abs_err(&ours, &r);
            assert!(
                d <= 5e-5 * scale.max(1.0),
                "b{b} {cin}->{cout} {h}x{w} p{pad}: {d} (max {scale})"
            );
        }
    }

    /// Equals candle's direct convolution for odd and even sizes, paddings 0–2, channel counts
    /// off the register block, one and several blocks per image, tiny images and more tiles
    /// than a block holds.
    #[test]
    fn matches_direct_convolution() {
        for &(b, cin, cout, h, w, pad, relu) in &[
            (1, 16, 16, 8, 8, 1, false),
            (2, 17, 19, 7, 9, 1, true),
            (1, 16, 20, 5, 6, 0, false),
            (3, 20, 16, 3, 4, 2, true),
            (1, 32, 16, 40, 700, 1, false),
            (2, 16, 24, 33, 31, 1, false),
            (1, 16, 16, 1, 1, 1, false),
            // Tile rows wider than a block (blocks of part of one row).
            (1, 256, 17, 6, 600, 1, true),
            (1, 64, 16, 11, 2100, 2, false),
        ] {
            let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
            let x = rand(b * cin * h * w, 1);
            let wt = rand(cout * cin * 9, 2);
            let bias = rand(cout, 3);
            let ours = conv3x3(&x, (b, cin, h, w), &wt, cout, Some(&bias), pad, relu);
            let dev = Device::Cpu;
            let xt = Tensor::from_vec(x, (b, cin, h, w), &dev).unwrap();
            let wtt = Tensor::from_vec(wt, (cout, cin, 3, 3), &dev).unwrap();
            let bt = Tensor::from_vec(bias, (1, cout, 1, 1), &dev).unwrap();
            let mut r = xt
                .conv2d(&wtt, pad, 1, 1, 1)
                .unwrap()
                .broadcast_add(&bt)
                .unwrap();
            if relu {
                r = r.relu().unwrap();
            }
            assert_eq!(r.dims(), &[b, cout, oh, ow]);
            let r: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
            let (d, scale) = max_abs_err(&ours, &r);
            assert!(
                d <= 5e-5 * scale.max(1.0),
                "b{b} {cin}->{cout} {h}x{w} p{pad}: {d} (max {scale})"
            );
        }
    }
}
