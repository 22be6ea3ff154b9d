//! The kernel checks: every op family on awkward sizes, against the naive references.

use super::*;

pub(super) fn kernel_checks(v: &mut Vec<Check>) {
    let k = KERNEL_TOL;
    // 7 × 37 = 259 elements: not a multiple of 4 (the vec4 tail) nor of a workgroup.
    let shape = [7, 37];
    for op in ALL_UNARY {
        v.push(
            Check::new(
                format!("unary/{}", lower(op)),
                k,
                vec![unary_input(op, &shape, 1)],
                move |t| Ok(vec![apply_unary(&t[0], op)?]),
            )
            .with_reference(move |x| vec![x[0].iter().map(|&v| naive::unary(op, v)).collect()]),
        );
    }
    let (sa, sb) = ([31, 17], [17]);
    for op in ALL_BINARY {
        if is_comparison(op) {
            v.push(comparison_check(op));
            continue;
        }
        let b = if op == BinaryOp::Div {
            Range(sb.to_vec(), 3, 0.5, 1.5)
        } else {
            u(&sb, 3)
        };
        v.push(
            Check::new(
                format!("binary/{}", lower(op)),
                k,
                vec![u(&sa, 2), b],
                move |t| Ok(vec![t[0].binary(&t[1], op)?]),
            )
            .with_reference(move |x| {
                vec![naive::elementwise(&x[0], &sa, &x[1], &sb, |p, q| {
                    naive::binary(op, p, q)
                })]
            }),
        );
    }
    v.push(
        Check::new(
            "binary/add_outer_broadcast",
            k,
            vec![u(&[31, 1], 4), u(&[1, 17], 5)],
            |t| Ok(vec![t[0].add(&t[1])?]),
        )
        .with_reference(|x| {
            vec![naive::elementwise(
                &x[0],
                &[31, 1],
                &x[1],
                &[1, 17],
                |p, q| p + q,
            )]
        }),
    );
    v.push(
        Check::new("binary/mul_0d", k, vec![u(&[257], 4), u(&[], 5)], |t| {
            Ok(vec![t[0].mul(&t[1])?, t[1].mul(&t[0])?])
        })
        .with_reference(|x| {
            vec![
                naive::elementwise(&x[0], &[257], &x[1], &[], |p, q| p * q),
                naive::elementwise(&x[1], &[], &x[0], &[257], |p, q| p * q),
            ]
        }),
    );

    let (m, kk, n) = (33, 47, 29);
    for (ta, tb) in TRANSPOSES {
        let a = if ta { [kk, m] } else { [m, kk] };
        let b = if tb { [n, kk] } else { [kk, n] };
        let name = format!("matmul/{}{}", flag(ta), flag(tb));
        v.push(matmul_check(name, vec![(&a, &b)], (6, 7), ta, tb));
    }
    let plain = |name: &str, a: &[usize], b: &[usize], seeds| {
        matmul_check(name.into(), vec![(a, b)], seeds, false, false)
    };
    v.push(plain(
        "matmul/large_257x131x65",
        &[257, 131],
        &[131, 65],
        (8, 9),
    ));
    v.push(plain("matmul/long_k_1031", &[9, 1031], &[1031, 7], (8, 9)));
    v.push(plain("matmul/vector_1x1", &[1, 1], &[1, 1], (8, 9)));
    v.push(plain(
        "matmul/batched",
        &[3, 17, 29],
        &[3, 29, 11],
        (10, 11),
    ));
    v.push(plain(
        "matmul/batched_shared_rhs",
        &[3, 17, 29],
        &[29, 11],
        (10, 11),
    ));
    v.push(matmul_check(
        "matmul/batched_tt".into(),
        vec![(&[3, 29, 17], &[3, 11, 29])],
        (10, 11),
        true,
        true,
    ));
    // Narrow products (the `matvec` family): X·w with rows of 37 (no whole vec4s) and a
    // [k, 3] w; Xᵀ·r with X stored [5003, 45] (k over 5000, 45 columns: no whole vec4s);
    // rᵀ·X, the narrow side m = 1 (C written transposed); batched with w stored [n, k].
    v.push(plain("matvec/x_w_203x37x3", &[203, 37], &[37, 3], (90, 91)));
    v.push(matmul_check(
        "matvec/xt_r_5003x45".into(),
        vec![(&[5003, 45], &[5003, 1])],
        (92, 93),
        true,
        false,
    ));
    v.push(matmul_check(
        "matvec/rt_x_1x131x130".into(),
        vec![(&[131, 1], &[131, 130]), (&[128, 1], &[128, 7])],
        (94, 95),
        true,
        false,
    ));
    v.push(matmul_check(
        "matvec/batched_nt".into(),
        vec![(&[3, 67, 41], &[3, 2, 41]), (&[2, 64, 16], &[16, 16])],
        (96, 97),
        false,
        true,
    ));
    // Operand layouts that each kernel reads differently: each transpose pair on three
    // shapes (m, k, n): 13·37·7, where every stored row length is odd; 20·44·12, where
    // every one is a whole number of vec4s; 1·16·5, where stored rows are 16 long or 1
    // or 5, so that nn, nt and tt pair operands read as vec4s with ones read as floats.
    // No m is a multiple of the kernels' 8 rows, and n = 7 and 5 no multiple of their 4
    // columns. On a GPU every matmul variant runs these (`run_checks_matching`).
    for (ta, tb) in TRANSPOSES {
        let stored = |(m, kk, n): (usize, usize, usize)| {
            let a = if ta { [kk, m] } else { [m, kk] };
            let b = if tb { [n, kk] } else { [kk, n] };
            (a, b)
        };
        let shapes = [(13, 37, 7), (20, 44, 12), (1, 16, 5)].map(stored);
        let operands = shapes.iter().map(|(a, b)| (&a[..], &b[..])).collect();
        let name = format!("matmul/layouts_{}{}", flag(ta), flag(tb));
        v.push(matmul_check(name, operands, (82, 83), ta, tb));
    }
    v.push(matmul_check(
        "matmul/layouts_batched".into(),
        vec![(&[3, 17, 29], &[3, 29, 11]), (&[3, 13, 28], &[28, 9])],
        (84, 85),
        false,
        false,
    ));
    v.push(matmul_check(
        "matmul/layouts_batched_tt".into(),
        vec![(&[3, 29, 17], &[3, 11, 29])],
        (86, 87),
        true,
        true,
    ));

    // 37 × 195 = 7215 elements: one workgroup of the full reduction.
    let r = [37, 195];
    type Reduction = fn(&Tensor) -> Result<Tensor>;
    type NaiveReduction = fn(&[f64], &[usize]) -> Vec<f64>;
    use naive::Reduce::{Max, Mean, Sum};
    let reductions: [(&str, Reduction, NaiveReduction); 10] = [
        ("sum", |x| x.sum(), |x, _| vec![naive::sum(x)]),
        (
            "mean",
            |x| x.mean(),
            |x, _| vec![naive::sum(x) / x.len() as f64],
        ),
        ("sqnorm", |x| x.sqnorm(), |x, _| vec![naive::dot(x, x)]),
        (
            "sum_axis0",
            |x| x.sum_axis(0, false),
            |x, s| naive::reduce_axis(x, s, 0, Sum),
        ),
        (
            "sum_axis1_keepdim",
            |x| x.sum_axis(1, true),
            |x, s| naive::reduce_axis(x, s, 1, Sum),
        ),
        (
            "mean_axis0",
            |x| x.mean_axis(0, false),
            |x, s| naive::reduce_axis(x, s, 0, Mean),
        ),
        (
            "mean_axis1",
            |x| x.mean_axis(1, false),
            |x, s| naive::reduce_axis(x, s, 1, Mean),
        ),
        (
            "max_axis0",
            |x| x.max_axis(0, false),
            |x, s| naive::reduce_axis(x, s, 0, Max),
        ),
        (
            "max_axis1",
            |x| x.max_axis(1, true),
            |x, s| naive::reduce_axis(x, s, 1, Max),
        ),
        (
            "sum_axis1_3d",
            |x| x.reshape(&[5, 37, 39])?.sum_axis(1, false),
            |x, _| naive::reduce_axis(x, &[5, 37, 39], 1, Sum),
        ),
    ];
    for (name, f, want) in reductions {
        v.push(
            Check::new(format!("reduce/{name}"), k, vec![u(&r, 12)], move |t| {
                Ok(vec![f(&t[0])?])
            })
            .with_reference(move |x| vec![want(&x[0], &r)]),
        );
    }
    v.push(
        Check::new("reduce/sum_1", k, vec![u(&[1], 12)], |t| {
            Ok(vec![t[0].sum()?])
        })
        .with_reference(|x| vec![vec![naive::sum(&x[0])]]),
    );
    v.push(
        Check::new("reduce/dot", k, vec![u(&[7215], 12), u(&[7215], 13)], |t| {
            Ok(vec![t[0].dot(&t[1])?])
        })
        .with_reference(|x| vec![vec![naive::dot(&x[0], &x[1])]]),
    );
    // Full reductions over many workgroups. 1,000,003 (a prime) elements are 250,000
    // vec4s and a 3-element tail; `full_gpu` (backend/gpu/kernels/reduce.rs) gives a workgroup at
    // most 256 invocations × 64 vec4s = 65,536 elements, so these spread over 16
    // workgroups whose partial sums a second dispatch adds (the 7,215 elements above
    // take one). An f64 sum of a million f32 values is exact to ~1e-13; the f32 tree's
    // ~1e-6 relative error is well inside KERNEL_TOL.
    let big = [1_000_003];
    type NaiveFull = fn(&[f64]) -> f64;
    let fulls: [(&str, Reduction, NaiveFull); 3] = [
        ("sum", |x| x.sum(), naive::sum),
        ("mean", |x| x.mean(), |x| naive::sum(x) / x.len() as f64),
        ("sqnorm", |x| x.sqnorm(), |x| naive::dot(x, x)),
    ];
    for (name, f, want) in fulls {
        v.push(
            Check::new(
                format!("reduce/{name}_1000003"),
                k,
                vec![u(&big, 90)],
                move |t| Ok(vec![f(&t[0])?]),
            )
            .with_reference(move |x| vec![vec![want(&x[0])]]),
        );
    }
    v.push(
        Check::new(
            "reduce/dot_1000003",
            k,
            vec![u(&big, 90), u(&big, 91)],
            |t| Ok(vec![t[0].dot(&t[1])?]),
        )
        .with_reference(|x| vec![vec![naive::dot(&x[0], &x[1])]]),
    );
    // Long axes, over rows ([3, 100,003]: contiguous) and columns ([50,021, 12]: four
    // outputs per invocation). Above 2^18 elements `axis_gpu` splits an axis into
    // chunks of 64 for parallelism (1,563 and 782 chunks, on 74 and 37 workgroups) and
    // reduces the chunks' partials in a second dispatch.
    let (rows, cols) = ([3, 100_003], [50_021, 12]);
    v.push(
        Check::new("reduce/sum_axis1_long", k, vec![u(&rows, 92)], |t| {
            Ok(vec![t[0].sum_axis(1, false)?])
        })
        .with_reference(move |x| vec![naive::reduce_axis(&x[0], &rows, 1, Sum)]),
    );
    v.push(
        Check::new("reduce/max_axis0_long", k, vec![u(&cols, 93)], |t| {
            Ok(vec![t[0].max_axis(0, false)?])
        })
        .with_reference(move |x| vec![naive::reduce_axis(&x[0], &cols, 0, Max)]),
    );

    let (ln, lc) = (33, 10);
    v.push(
        Check::new("loss/log_softmax", k, vec![u(&[ln, lc], 14)], |t| {
            Ok(vec![t[0].log_softmax()?])
        })
        .with_reference(move |x| vec![naive::log_softmax(&x[0], lc)]),
    );
    v.push(
        Check::new("loss/softmax", k, vec![u(&[ln, lc], 14)], |t| {
            Ok(vec![t[0].softmax()?])
        })
        .with_reference(move |x| vec![naive::softmax(&x[0], lc)]),
    );
    v.push(
        Check::new(
            "loss/cross_entropy",
            k,
            vec![u(&[ln, lc], 14), labels(ln, lc)],
            |t| Ok(vec![t[0].cross_entropy(&t[1], None)?]),
        )
        .with_reference(move |x| vec![vec![naive::cross_entropy(&x[0], &x[1], None, lc)]]),
    );
    v.push(
        Check::new(
            "loss/cross_entropy_weighted",
            k,
            vec![u(&[ln, lc], 14), labels(ln, lc), u(&[ln], 15)],
            |t| Ok(vec![t[0].cross_entropy(&t[1], Some(&t[2]))?]),
        )
        .with_reference(move |x| vec![vec![naive::cross_entropy(&x[0], &x[1], Some(&x[2]), lc)]]),
    );
    // The cross-entropy's fused gradient: the upstream gradient as a device scalar, and
    // weighted with a constant one folded into the kernel's parameters.
    v.push(
        Check::new(
            "loss/ce_grad",
            k,
            vec![u(&[ln, lc], 14), labels(ln, lc), u(&[1], 18)],
            |t| {
                let g = t[2].reshape(&[])?;
                Ok(vec![crate::ops::loss::cross_entropy_grad_raw(
                    &t[0], &t[1], None, None, &g,
                )?])
            },
        )
        .with_reference(move |x| vec![naive::cross_entropy_grad(&x[0], &x[1], None, x[2][0], lc)]),
    );
    v.push(
        Check::new(
            "loss/ce_grad_weighted",
            k,
            vec![u(&[ln, lc], 14), labels(ln, lc), u(&[ln], 15)],
            |t| {
                let g = Tensor::full(&[], 0.75, &t[0].device())?;
                let g = if g.dtype() == t[0].dtype() {
                    g
                } else {
                    g.to_dtype(t[0].dtype())?
                };
                Ok(vec![crate::ops::loss::cross_entropy_grad_raw(
                    &t[0],
                    &t[1],
                    Some(&t[2]),
                    None,
                    &g,
                )?])
            },
        )
        .with_reference(move |x| {
            vec![naive::cross_entropy_grad(
                &x[0],
                &x[1],
                Some(&x[2]),
                0.75,
                lc,
            )]
        }),
    );
    v.push(
        Check::new(
            "loss/ce_grad_vjp",
            k,
            vec![
                u(&[ln, lc], 14),
                labels(ln, lc),
                u(&[ln], 15),
                u(&[1], 18),
                u(&[ln, lc], 19),
            ],
            |t| {
                let g = t[3].reshape(&[])?;
                let (dz, r) = crate::ops::loss::cross_entropy_grad_vjp_raw(
                    &t[0],
                    &t[1],
                    Some(&t[2]),
                    &g,
                    &t[4],
                )?;
                Ok(vec![dz, r])
            },
        )
        .with_reference(move |x| {
            let (dz, r) =
                naive::cross_entropy_grad_vjp(&x[0], &x[1], Some(&x[2]), x[3][0], &x[4], lc);
            vec![dz, r]
        }),
    );
    v.push(
        Check::new("loss/mse", k, vec![u(&[257], 16), u(&[257], 17)], |t| {
            Ok(vec![t[0].mse(&t[1])?])
        })
        .with_reference(|x| vec![vec![naive::mse(&x[0], &x[1])]]),
    );
    // The mean squared difference through the same multi-workgroup path as above.
    v.push(
        Check::new("loss/mse_1000003", k, vec![u(&big, 90), u(&big, 91)], |t| {
            Ok(vec![t[0].mse(&t[1])?])
        })
        .with_reference(|x| vec![vec![naive::mse(&x[0], &x[1])]]),
    );

    v.push(
        Check::new("index/one_hot", k, vec![labels(ln, lc)], move |t| {
            Ok(vec![Tensor::one_hot(&t[0], lc)?])
        })
        .with_reference(move |x| {
            let hot = |i: usize, j: usize| if x[0][i] == j as f64 { 1.0 } else { 0.0 };
            vec![(0..ln * lc).map(|e| hot(e / lc, e % lc)).collect()]
        }),
    );
    v.push(
        Check::new(
            "index/gather",
            k,
            vec![u(&[ln, lc], 18), labels(ln, lc)],
            |t| Ok(vec![t[0].gather(&t[1])?]),
        )
        .with_reference(move |x| vec![(0..ln).map(|i| x[0][i * lc + x[1][i] as usize]).collect()]),
    );
    v.push(
        Check::new("index/transpose", k, vec![u(&[31, 17], 19)], |t| {
            Ok(vec![t[0].transpose()?])
        })
        .with_reference(|x| vec![naive::transpose(&x[0], 31, 17)]),
    );
    v.push(
        Check::new(
            "index/transpose_batched",
            k,
            vec![u(&[3, 31, 17], 19)],
            |t| Ok(vec![t[0].transpose()?]),
        )
        .with_reference(|x| vec![naive::transpose(&x[0], 31, 17)]),
    );
    v.push(
        Check::new(
            "index/concat",
            k,
            vec![u(&[7, 3], 20), u(&[1], 21), u(&[257], 22)],
            |t| Ok(vec![Tensor::concat(&[&t[0], &t[1], &t[2]])?]),
        )
        .with_reference(|x| vec![x.concat()]),
    );
    v.push(
        Check::new("index/slice", k, vec![u(&[257], 23)], |t| {
            Ok(vec![t[0].slice(5, 101)?, t[0].slice(256, 1)?])
        })
        .with_reference(|x| vec![x[0][5..106].to_vec(), x[0][256..].to_vec()]),
    );
    v.push(
        Check::new("index/split", k, vec![u(&[257], 23)], |t| {
            t[0].split(&[1, 100, 156])
        })
        .with_reference(|x| {
            vec![
                x[0][..1].to_vec(),
                x[0][1..101].to_vec(),
                x[0][101..].to_vec(),
            ]
        }),
    );

    v.push(
        Check::new("shape/broadcast_to", k, vec![u(&[17], 24)], |t| {
            Ok(vec![t[0].broadcast_to(&[31, 17])?])
        })
        .with_reference(|x| vec![naive::broadcast_to(&x[0], &[17], &[31, 17])])
        .with_kernel_family("elementwise"),
    );
    v.push(
        Check::new("shape/sum_to", k, vec![u(&[31, 17], 25)], |t| {
            Ok(vec![t[0].sum_to(&[17])?, t[0].sum_to(&[31, 1])?])
        })
        .with_reference(|x| {
            vec![
                naive::sum_to(&x[0], &[31, 17], &[17]),
                naive::sum_to(&x[0], &[31, 17], &[31, 1]),
            ]
        })
        .with_kernel_family("reduce"),
    );
    v.push(
        Check::new("fill/full_like", k, vec![u(&[257], 26)], |t| {
            Ok(vec![t[0].full_like(0.5)?, t[0].zeros_like()?])
        })
        .with_reference(|_| vec![vec![0.5; 257], vec![0.0; 257]]),
    );

    let vecs = || vec![u(&[257], 27), u(&[257], 28)];
    // Every update is elementwise linear: y_i = p·x_i + q·z_i.
    let lin = |p: f64, x: &[f64], q: f64, z: &[f64]| -> Vec<f64> {
        x.iter().zip(z).map(|(a, b)| p * a + q * b).collect()
    };
    v.push(
        Check::new("update/axpy_host", k, vecs(), |t| {
            Ok(vec![t[0].axpy(-0.3, &t[1])?])
        })
        .with_reference(move |x| vec![lin(1.0, &x[0], -0.3, &x[1])]),
    );
    v.push(
        Check::new(
            "update/axpy_device",
            k,
            [vecs(), vec![u(&[], 29)]].concat(),
            |t| Ok(vec![t[0].axpy(&t[2], &t[1])?]),
        )
        .with_reference(move |x| vec![lin(1.0, &x[0], x[2][0], &x[1])]),
    );
    v.push(
        Check::new(
            "update/axpby_device",
            k,
            [vecs(), vec![u(&[], 29), u(&[1], 30)]].concat(),
            |t| {
                Ok(vec![
                    t[0].axpby(&t[3], &t[2], &t[1])?,
                    t[0].axpby(0.5, 2.0, &t[1])?,
                ])
            },
        )
        .with_reference(move |x| {
            vec![
                lin(x[3][0], &x[0], x[2][0], &x[1]),
                lin(0.5, &x[0], 2.0, &x[1]),
            ]
        }),
    );
    v.push(
        Check::new(
            "update/axpy_ratio",
            k,
            [vecs(), vec![u(&[], 29), Range(vec![], 30, 0.5, 1.5)]].concat(),
            |t| {
                Ok(vec![
                    t[0].axpy_ratio(&t[2], &t[3], 1.0, &t[1])?,
                    t[0].axpy_ratio(&t[2], &t[3], -1.0, &t[1])?,
                ])
            },
        )
        .with_reference(move |x| {
            let ratio = x[2][0] / x[3][0];
            vec![
                lin(1.0, &x[0], ratio, &x[1]),
                lin(1.0, &x[0], -ratio, &x[1]),
            ]
        }),
    );
}

/// The four (trans_a, trans_b) pairs.
pub(super) const TRANSPOSES: [(bool, bool); 4] =
    [(false, false), (false, true), (true, false), (true, true)];

/// `name`: op(a)·op(b) for each pair of stored operand shapes (a's inputs seeded
/// `seeds.0 + 2i`, b's `seeds.1 + 2i`), one output each, through the public op or,
/// with a plan, through `matmul_with`.
fn matmul_check(
    name: String,
    operands: Vec<(&[usize], &[usize])>,
    seeds: (u64, u64),
    ta: bool,
    tb: bool,
) -> Check {
    let shapes: Vec<(Vec<usize>, Vec<usize>)> = operands
        .iter()
        .map(|(a, b)| (a.to_vec(), b.to_vec()))
        .collect();
    let inputs = shapes
        .iter()
        .zip(0u64..)
        .flat_map(|((a, b), i)| [u(a, seeds.0 + 2 * i), u(b, seeds.1 + 2 * i)])
        .collect();
    Check::new(name, KERNEL_TOL, inputs, move |t| {
        t.chunks(2).map(|p| p[0].matmul_t(&p[1], ta, tb)).collect()
    })
    .with_reference(move |x| {
        shapes
            .iter()
            .zip(x.chunks(2))
            .map(|((sa, sb), p)| naive::matmul(&p[0], sa, &p[1], sb, ta, tb))
            .collect()
    })
}

/// A comparison on inputs with exact ties, held to exact equality: the inputs are f32
/// values, which f64 holds exactly and in the same order, so the 0/1 answer of the f32
/// device and of the f64 reference must be the same, bit for bit, on any correct
/// kernel (a comparison does not round). Three outputs: a op max(a, c), with c
/// broadcast along rows (a tie wherever c ≤ a, about half the elements); b op a, with
/// b a copy of a in every third place; a op d, with d a column holding one of each
/// row's values (a tie through a column broadcast).
fn comparison_check(op: BinaryOp) -> Check {
    let (m, n) = (31, 17);
    let a = u(&[m, n], 2);
    let av = a.values().1;
    let fresh = oracle_pair(&[m, n], 4).0;
    let b = (0..m * n)
        .map(|i| if i % 3 == 0 { av[i] } else { fresh[i] })
        .collect();
    let d = (0..m).map(|r| av[r * n + (5 * r) % n]).collect();
    Check::new(
        format!("binary/{}", lower(op)),
        0.0,
        vec![a, u(&[n], 3), Values(vec![m, n], b), Values(vec![m, 1], d)],
        move |t| {
            Ok(vec![
                t[0].binary(&t[0].maximum(&t[1])?, op)?,
                t[2].binary(&t[0], op)?,
                t[0].binary(&t[3], op)?,
            ])
        },
    )
    .with_reference(move |x| {
        let f = |p, q| naive::binary(op, p, q);
        let max = naive::elementwise(&x[0], &[m, n], &x[1], &[n], |p, q| {
            naive::binary(BinaryOp::Max, p, q)
        });
        vec![
            naive::elementwise(&x[0], &[m, n], &max, &[m, n], f),
            naive::elementwise(&x[2], &[m, n], &x[0], &[m, n], f),
            naive::elementwise(&x[0], &[m, n], &x[3], &[m, 1], f),
        ]
    })
}

pub(super) fn flag(t: bool) -> &'static str {
    if t { "t" } else { "n" }
}
