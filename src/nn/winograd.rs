//! 3x3, stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, 2016),
//! on the CPU.
//!
//! Each 2x2 block of output pixels (a *tile*) is computed from the 4x4 input patch under it: the
//! patch and the filter are transformed (`V = Bᵀ d B`, `U = G g Gᵀ`), multiplied element-wise and
//! summed over input channels, then transformed back (`Y = Aᵀ M A`). The sum over channels at
//! each of the 16 positions ξ is a matrix product `M_ξ = U_ξ · V_ξ` (`cout × cin` by `cin ×
//! tiles`), so the multiplications drop from 36 to 16 per tile and channel pair: 2.25x fewer than
//! the direct (im2col) product.
//!
//! Work is split into blocks of tiles (part of one tile row, or several whole tile rows) sized
//! so that a block's transformed input stays in the L2 cache; each block is one task.
//! Transforms run across a block's tiles in a vectorisable order (tiles of a row are
//! consecutive in `V` and `M`). Rounding differs from the direct sum by a few ulps of the
//! intermediate values (tests: ≤ 1e-4 on unit-scale data).

use super::{grown, with_scratch, OutPtr};
use rayon::prelude::*;

/// `(b, c, h, w)` of the input.
pub(super) type Dims = (usize, usize, usize, usize);

/// Defines `fn NAME(args)` that runs `BODY(args)` (an `#[inline(always)]` function) compiled for
/// AVX2 where the CPU has it, and as built otherwise: the body is inlined into a
/// `#[target_feature]` copy. (A closure passed to one generic AVX2 wrapper was not inlined and
/// ran unvectorised: conv6 forward 31.5 → 50.9 ms.)
macro_rules! avx2_multiversion {
    ($(#[$doc:meta])* fn $name:ident => $body:ident($($arg:ident: $ty:ty),* $(,)?)) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            if has_avx2() {
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                // SAFETY: the CPU has AVX2 (checked above).
                return unsafe { avx2($($arg),*) };
            }
            $body($($arg),*)
        }
    };
}

/// Transformed values per block (1 MB: L2-sized).
const BLOCK_FLOATS: usize = 1 << 18;

/// The 16 transformed filters `U_ξ = (G g Gᵀ)_ξ`, as 16 matrices `(cout, cin)`.
fn transform_weights(weight: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * cout * cin];
    for co in 0..cout {
        for ci in 0..cin {
            let g = &weight[(co * cin + ci) * 9..][..9];
            // G g: 4x3, G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]].
            let mut gg = [[0f32; 3]; 4];
            for j in 0..3 {
                let (a, b, c) = (g[j], g[3 + j], g[6 + j]);
                gg[0][j] = a;
                gg[1][j] = 0.5 * (a + b + c);
                gg[2][j] = 0.5 * (a - b + c);
                gg[3][j] = c;
            }
            for (i, row) in gg.iter().enumerate() {
                let (a, b, c) = (row[0], row[1], row[2]);
                let t = [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c];
                for (j, v) in t.into_iter().enumerate() {
                    u[((i * 4 + j) * cout + co) * cin + ci] = v;
                }
            }
        }
    }
    u
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

/// Splits every image's `nty x ntx` tiles into blocks of about `cap` tiles.
fn blocks(b: usize, nty: usize, ntx: usize, cap: usize) -> Vec<Block> {
    let mut out = Vec::new();
    for image in 0..b {
        if ntx >= cap {
            for ty in 0..nty {
                for tx0 in (0..ntx).step_by(cap) {
                    out.push(Block {
                        image,
                        ty: (ty, ty + 1),
                        tx: (tx0, (tx0 + cap).min(ntx)),
                    });
                }
            }
        } else {
            let rows = (cap / ntx).max(1);
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

/// Per-thread buffers: transformed input `V` (cin x 16 x tiles), products `M` (cout x 16 x
/// tiles), 4 zero-padded input rows and 2 output rows.
#[derive(Default)]
struct Scratch {
    v: Vec<f32>,
    m: Vec<f32>,
    rows: Vec<f32>,
    out_rows: Vec<f32>,
}

/// Whether Winograd's F(2x2, 3x3) is used for a layer: 3x3 kernel, stride 1, padding ≤ 2, and
/// enough channels on both sides for the transforms to cost less than the multiplications they
/// save.
pub(super) fn applies(k: usize, stride: usize, pad: usize, cin: usize, cout: usize) -> bool {
    k == 3 && stride == 1 && pad <= 2 && cin >= 16 && cout >= 16
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
    assert!(pad <= 2 && h + 2 * pad >= 3 && w + 2 * pad >= 3);
    let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
    let (nty, ntx) = (oh.div_ceil(2), ow.div_ceil(2));
    let u = transform_weights(weight, cout, cin);
    let cap = (BLOCK_FLOATS / (16 * cin.max(cout))).clamp(16, 512);
    let work = blocks(b, nty, ntx, cap);
    let mut out = vec![0f32; b * cout * oh * ow];
    let dst = OutPtr(out.as_mut_ptr());
    let run = |s: &mut Scratch, blk: &Block| {
        let d = dst;
        let n = blk.tiles();
        transform_input(x, (cin, h, w), pad, blk, s);
        grown(&mut s.m, 16 * cout * n);
        for xi in 0..16 {
            // SAFETY: `u` holds 16 contiguous matrices (cout, cin); `v` is (cin, 16, n), read
            // as 16 matrices (cin, n) of row stride 16·n, and `m` (cout, 16, n) likewise.
            unsafe {
                gemm::gemm(
                    cout,
                    n,
                    cin,
                    s.m.as_mut_ptr().add(xi * n),
                    1,
                    (16 * n) as isize,
                    false,
                    u.as_ptr().add(xi * cout * cin),
                    1,
                    cin as isize,
                    s.v.as_ptr().add(xi * n),
                    1,
                    (16 * n) as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
        // SAFETY: this block writes only its own tiles' pixels of image `blk.image`.
        let image = unsafe {
            std::slice::from_raw_parts_mut(d.0.add(blk.image * cout * oh * ow), cout * oh * ow)
        };
        transform_output(
            &s.m,
            cout,
            (oh, ow),
            blk,
            bias,
            relu,
            image,
            &mut s.out_rows,
        );
    };
    work.par_iter()
        .for_each(|blk| with_scratch(|s: &mut Scratch| run(s, blk)));
    out
}

/// The weight gradient of [`conv3x3`]: `dW` `(cout, cin, 3, 3)` from the input `x` and the
/// output gradient `dy` `(b, cout, oh, ow)`.
///
/// The adjoint of the forward transforms: with `V = Bᵀ d B` (the forward's input transform) and
/// `D = A dY Aᵀ` per tile, `dU_ξ = Σ_tiles D_ξ · V_ξᵀ` (16 products `cout × tiles` by `tiles ×
/// cin`, summed per thread over its blocks) and `dW = Gᵀ dU G`.
pub(super) fn grad_weight3x3(
    x: &[f32],
    (b, cin, h, w): Dims,
    dy: &[f32],
    cout: usize,
    pad: usize,
) -> Vec<f32> {
    assert!(pad <= 2 && h + 2 * pad >= 3 && w + 2 * pad >= 3);
    let (oh, ow) = (h + 2 * pad - 2, w + 2 * pad - 2);
    let (nty, ntx) = (oh.div_ceil(2), ow.div_ceil(2));
    let cap = (BLOCK_FLOATS / (16 * cin.max(cout))).clamp(16, 512);
    let work = blocks(b, nty, ntx, cap);
    let per_thread = work.len().div_ceil(rayon::current_num_threads()).max(1);
    let du = work
        .par_iter()
        .with_min_len(per_thread)
        .fold(
            || (Scratch::default(), vec![0f32; 16 * cout * cin]),
            |(mut s, mut acc), blk| {
                let n = blk.tiles();
                transform_input(x, (cin, h, w), pad, blk, &mut s);
                let image = &dy[blk.image * cout * oh * ow..][..cout * oh * ow];
                transform_grad(image, cout, (oh, ow), blk, &mut s);
                for xi in 0..16 {
                    // SAFETY: `m` is (cout, 16, n) and `v` (cin, 16, n): ξ's slices are
                    // (cout, n) and, read transposed, (n, cin), both of row stride 16·n; `acc`
                    // holds 16 contiguous (cout, cin) sums.
                    unsafe {
                        gemm::gemm(
                            cout,
                            cin,
                            n,
                            acc.as_mut_ptr().add(xi * cout * cin),
                            1,
                            cin as isize,
                            true,
                            s.m.as_ptr().add(xi * n),
                            1,
                            (16 * n) as isize,
                            s.v.as_ptr().add(xi * n),
                            (16 * n) as isize,
                            1,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                }
                (s, acc)
            },
        )
        .map(|(_, acc)| acc)
        .reduce_with(|mut a, b| {
            for (a, b) in a.iter_mut().zip(&b) {
                *a += b;
            }
            a
        })
        .unwrap_or_else(|| vec![0f32; 16 * cout * cin]);
    // dW = Gᵀ dU G, Gᵀ = [[1, ½, ½, 0], [0, ½, −½, 0], [0, ½, ½, 1]].
    let gt = |v: [f32; 4]| {
        [
            v[0] + 0.5 * (v[1] + v[2]),
            0.5 * (v[1] - v[2]),
            0.5 * (v[1] + v[2]) + v[3],
        ]
    };
    let mut dw = vec![0f32; cout * cin * 9];
    for co in 0..cout {
        for ci in 0..cin {
            let at = |xi: usize| du[(xi * cout + co) * cin + ci];
            // Gᵀ applied down each column j, then across each resulting row.
            let cols: [[f32; 3]; 4] =
                std::array::from_fn(|j| gt([at(j), at(4 + j), at(8 + j), at(12 + j)]));
            for r in 0..3 {
                let row = gt([cols[0][r], cols[1][r], cols[2][r], cols[3][r]]);
                dw[(co * cin + ci) * 9 + r * 3..][..3].copy_from_slice(&row);
            }
        }
    }
    dw
}

avx2_multiversion! {
    /// `D = A dY Aᵀ` for every output channel and tile of `blk` (the output gradient's 2x2 block,
    /// zero beyond the output), into `s.m` (cout x 16 x tiles). `A = [[1, 0], [1, 1], [1, −1], [0, −1]]`.
    fn transform_grad => transform_grad_body(
        dy: &[f32],
        cout: usize,
        shape: (usize, usize),
        blk: &Block,
        s: &mut Scratch,
    )
}

#[inline(always)]
fn transform_grad_body(
    dy: &[f32],
    cout: usize,
    (oh, ow): (usize, usize),
    blk: &Block,
    s: &mut Scratch,
) {
    let n = blk.tiles();
    let ntx = blk.tx.1 - blk.tx.0;
    let half = ntx.next_multiple_of(8);
    grown(&mut s.m, 16 * cout * n);
    // Rows 2ty and 2ty + 1, split into even and odd columns.
    s.out_rows.resize(4 * half, 0.0);
    let ox = 2 * blk.tx.0;
    let cols = (2 * ntx).min(ow - ox);
    for co in 0..cout {
        let plane = &dy[co * oh * ow..][..oh * ow];
        for (r, ty) in (blk.ty.0..blk.ty.1).enumerate() {
            for i in 0..2 {
                let (even, odd) = s.out_rows[2 * i * half..][..2 * half].split_at_mut(half);
                even.fill(0.0);
                odd.fill(0.0);
                let oy = 2 * ty + i;
                if oy < oh {
                    let src = &plane[oy * ow + ox..][..cols];
                    for (j, &v) in src.iter().enumerate() {
                        if j % 2 == 0 {
                            even[j / 2] = v;
                        } else {
                            odd[j / 2] = v;
                        }
                    }
                }
            }
            let t0 = r * ntx;
            let rows = &s.out_rows;
            let mut rows16 = s.m[co * 16 * n..][..16 * n].chunks_exact_mut(n);
            let outs: [&mut [f32]; 16] =
                std::array::from_fn(|_| &mut rows16.next().expect("16 rows")[t0..t0 + ntx]);
            for t in (0..ntx).step_by(8) {
                let take = (ntx - t).min(8);
                let y = |i: usize, j: usize| load(&rows[(2 * i + j) * half..][..half], t);
                // A along the rows (per column j), then along the columns.
                let u: [[L; 2]; 4] = [
                    [y(0, 0), y(0, 1)],
                    [add(y(0, 0), y(1, 0)), add(y(0, 1), y(1, 1))],
                    [sub(y(0, 0), y(1, 0)), sub(y(0, 1), y(1, 1))],
                    [sub([0.0; 8], y(1, 0)), sub([0.0; 8], y(1, 1))],
                ];
                for (i, [a, b]) in u.iter().enumerate() {
                    let vals = [*a, add(*a, *b), sub(*a, *b), sub([0.0; 8], *b)];
                    for (j, v) in vals.iter().enumerate() {
                        store(outs[i * 4 + j], t, v, take);
                    }
                }
            }
        }
    }
}

/// Eight lanes: the transforms run over 8 consecutive tiles at a time.
type L = [f32; 8];

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

/// Whether the AVX2 builds of the transforms run on this CPU.
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

avx2_multiversion! {
    /// `V = Bᵀ d B` for every input channel and tile of `blk`, into `s.v` (cin x 16 x tiles).
    /// `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`.
    fn transform_input => transform_input_body(
        x: &[f32],
        dims: (usize, usize, usize),
        pad: usize,
        blk: &Block,
        s: &mut Scratch,
    )
}

#[inline(always)]
#[allow(clippy::needless_range_loop)] // col[i][j] is filled across i for each j
fn transform_input_body(
    x: &[f32],
    (cin, h, w): (usize, usize, usize),
    pad: usize,
    blk: &Block,
    s: &mut Scratch,
) {
    let n = blk.tiles();
    let ntx = blk.tx.1 - blk.tx.0;
    // Padded row: input columns 2·tx0 − pad .. 2·tx1 − pad + 2, split into even and odd
    // columns (so that tile t reads lanes t and t + 1 of each), with room for whole lane groups.
    let row_len = 2 * ntx + 2;
    let half = ntx.next_multiple_of(8) + 8;
    grown(&mut s.v, 16 * cin * n);
    s.rows.resize(row_len + 8 * half, 0.0);
    let (row, split) = s.rows.split_at_mut(row_len);
    let x0 = (2 * blk.tx.0) as isize - pad as isize;
    for ci in 0..cin {
        let plane = &x[(blk.image * cin + ci) * h * w..][..h * w];
        let vci = &mut s.v[ci * 16 * n..][..16 * n];
        for (r, ty) in (blk.ty.0..blk.ty.1).enumerate() {
            // Input row 2ty + i − pad lives in slot (2ty + i) mod 4: the next tile row reuses
            // this one's last two rows.
            for i in if r == 0 { 0..4 } else { 2..4 } {
                let iy = (2 * ty + i) as isize - pad as isize;
                if iy < 0 || iy >= h as isize {
                    row.fill(0.0);
                } else {
                    let src = &plane[iy as usize * w..][..w];
                    // Columns x0 + j for j in 0..row_len, zero outside 0..w.
                    let lo = (-x0).clamp(0, row_len as isize) as usize;
                    let hi = (w as isize - x0).clamp(lo as isize, row_len as isize) as usize;
                    row[..lo].fill(0.0);
                    row[hi..].fill(0.0);
                    if hi > lo {
                        let s0 = (x0 + lo as isize) as usize;
                        row[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
                    }
                }
                let slot = (2 * ty + i) % 4;
                let (even, odd) = split[2 * slot * half..][..2 * half].split_at_mut(half);
                for (e, pair) in row.chunks_exact(2).enumerate() {
                    even[e] = pair[0];
                    odd[e] = pair[1];
                }
            }
            let t0 = r * ntx;
            let slots: [usize; 4] = std::array::from_fn(|i| (2 * ty + i) % 4);
            let lanes = |i: usize, j: usize, t: usize| -> L {
                // Column 2t + j of row i: even/odd lane t + j/2.
                load(&split[(2 * slots[i] + j % 2) * half..][..half], t + j / 2)
            };
            for t in (0..ntx).step_by(8) {
                // Bᵀ d: the four rows combined, per column j.
                let mut col = [[[0f32; 8]; 4]; 4];
                for j in 0..4 {
                    let (a, b, c, d) = (
                        lanes(0, j, t),
                        lanes(1, j, t),
                        lanes(2, j, t),
                        lanes(3, j, t),
                    );
                    col[0][j] = sub(a, c);
                    col[1][j] = add(b, c);
                    col[2][j] = sub(c, b);
                    col[3][j] = sub(b, d);
                }
                // (Bᵀ d) B: the same combination of the columns.
                let take = (ntx - t).min(8);
                for (i, row) in col.iter().enumerate() {
                    let vals = [
                        sub(row[0], row[2]),
                        add(row[1], row[2]),
                        sub(row[2], row[1]),
                        sub(row[1], row[3]),
                    ];
                    for (j, v) in vals.iter().enumerate() {
                        store(&mut vci[(i * 4 + j) * n + t0..], t, v, take);
                    }
                }
            }
        }
    }
}

avx2_multiversion! {
    /// `Y = Aᵀ M A` (+ bias, activation) for every output channel and tile of `blk`, written into
    /// `image` (`cout x oh x ow`). `Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]]`.
    fn transform_output => transform_output_body(
        m: &[f32],
        cout: usize,
        shape: (usize, usize),
        blk: &Block,
        bias: Option<&[f32]>,
        relu: bool,
        image: &mut [f32],
        rows: &mut Vec<f32>,
    )
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn transform_output_body(
    m: &[f32],
    cout: usize,
    (oh, ow): (usize, usize),
    blk: &Block,
    bias: Option<&[f32]>,
    relu: bool,
    image: &mut [f32],
    rows: &mut Vec<f32>,
) {
    let n = blk.tiles();
    let ntx = blk.tx.1 - blk.tx.0;
    let span = 2 * ntx.next_multiple_of(8);
    rows.resize(2 * span, 0.0);
    let mut part = [0f32; 8];
    for co in 0..cout {
        let b = [bias.map_or(0.0, |b| b[co]); 8];
        let mc = &m[co * 16 * n..][..16 * n];
        for (r, ty) in (blk.ty.0..blk.ty.1).enumerate() {
            let t0 = r * ntx;
            let (top, bottom) = rows.split_at_mut(span);
            for t in (0..ntx).step_by(8) {
                let take = (ntx - t).min(8);
                let mut ms = [[0f32; 8]; 16];
                for (xi, v) in ms.iter_mut().enumerate() {
                    let at = xi * n + t0 + t;
                    if take == 8 {
                        *v = load(mc, at);
                    } else {
                        part[..take].copy_from_slice(&mc[at..at + take]);
                        *v = part;
                    }
                }
                // Aᵀ M: rows 0 + 1 + 2 and 1 − 2 − 3, per column j.
                let mut s = [[[0f32; 8]; 4]; 2];
                for j in 0..4 {
                    s[0][j] = add(add(ms[j], ms[4 + j]), ms[8 + j]);
                    s[1][j] = sub(sub(ms[4 + j], ms[8 + j]), ms[12 + j]);
                }
                for (sr, dst) in s.iter().zip([&mut *top, &mut *bottom]) {
                    let mut y0 = add(add(add(sr[0], sr[1]), sr[2]), b);
                    let mut y1 = add(sub(sub(sr[1], sr[2]), sr[3]), b);
                    if relu {
                        for l in 0..8 {
                            y0[l] = y0[l].max(0.0);
                            y1[l] = y1[l].max(0.0);
                        }
                    }
                    let d = <&mut [f32; 16]>::try_from(&mut dst[2 * t..2 * t + 16]).expect("16");
                    for l in 0..8 {
                        d[2 * l] = y0[l];
                        d[2 * l + 1] = y1[l];
                    }
                }
            }
            let ox = 2 * blk.tx.0;
            let cols = (2 * ntx).min(ow - ox);
            for (i, src) in [&*top, &*bottom].into_iter().enumerate() {
                let oy = 2 * ty + i;
                if oy < oh {
                    image[(co * oh + oy) * ow + ox..][..cols].copy_from_slice(&src[..cols]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{max_abs_err, test_values as rand};
    use candle_core::{Device, Tensor};

    /// The weight gradient equals candle's (the gradient of `Σ probe · conv(x, w)`), for odd and
    /// even sizes, paddings 0–2 and several images and blocks.
    #[test]
    fn weight_gradient_matches_candle() {
        for &(b, cin, cout, h, w, pad) in &[
            (1, 16, 16, 8, 8, 1),
            (2, 17, 19, 7, 9, 1),
            (1, 16, 20, 5, 6, 0),
            (3, 20, 16, 3, 4, 2),
            (1, 32, 16, 40, 300, 1),
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
                d <= 1e-5 * scale.max(1.0),
                "b{b} {cin}->{cout} {h}x{w} p{pad}: {d} (max {scale})"
            );
        }
    }

    /// Equals candle's direct convolution for odd and even sizes, paddings 0–2, one and several
    /// blocks per image, tiny images and more tiles than a block holds.
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
            (1, 64, 16, 6, 600, 1, true),
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
                d <= 1e-5 * scale.max(1.0),
                "b{b} {cin}->{cout} {h}x{w} p{pad}: {d} (max {scale})"
            );
        }
    }
}
