#!/usr/bin/env python3
"""Plants known, realistic one-line bugs one at a time and checks that a test fails.

Each entry below is a bug that once survived the whole test suite (issue #9) or that a
test was written to catch. For each one the script edits the source, builds the named
test target, runs it, and restores the file. A bug whose tests still pass ("SURVIVED")
or whose edit no longer applies or compiles ("STALE": the code moved; update the entry)
fails the run. Used by .ci/run; run it by hand after changing any code listed here:

    python3 .ci/planted_bugs.py            # every entry
    python3 .ci/planted_bugs.py --list     # names only
    python3 .ci/planted_bugs.py rad_skips_step_0 adam_without_bias_correction

The broader, automatic mutation run is cargo-mutants (README, "Mutation testing").
"""

import os
import subprocess
import sys
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Bug:
    name: str
    # (file, text as it is, text with the bug); each text must occur exactly once.
    edits: list
    # `cargo test` arguments: the target (`--lib`, or `--test NAME`), then a name filter
    # selecting the tests expected to catch it.
    test: list


BUGS = [
    # BDA's α_k = μ/(k+1) shifted by one step: the trajectory still converges, and the
    # reverse sweep still matches finite differences of itself; only the definition
    # checked by hand catches it.
    Bug(
        "bda_alpha_off_by_one",
        [("src/bilevel/methods/bda.rs", "mu / (k as f64 + 1.0)", "mu / (k as f64 + 2.0)")],
        ["--lib", "bda_steps_follow_the_aggregation_by_hand"],
    ),
    # The cross-entropy VJP's row bias (issue #12) read as zero. Needs a GPU adapter.
    Bug(
        "ce_grad_vjp_drops_the_row_bias",
        [("shaders/loss.wgsl", "return u[e] + u_bias[e - lo];", "return u[e];")],
        ["--lib", "the_cross_entropy_vjp_adds_a_row_bias_itself"],
    ),
    Bug(
        "trad_reverses_k_plus_1_steps",
        [("src/bilevel/trajectory.rs", "let steps = (t - k..t).rev();",
          "let steps = (t.saturating_sub(k + 1)..t).rev();")],
        ["--test", "host_references", "unrolled_methods"],
    ),
    Bug(
        "rad_skips_step_0",
        [("src/bilevel/trajectory.rs", "let steps = (t - k..t).rev();",
          "let steps = (t - k + 1..t).rev();")],
        ["--test", "host_references", "unrolled_methods_match_a_host_unroll_on_hyper_cleaning"],
    ),
    Bug(
        "forward_skips_the_tangent_update_at_step_0",
        [("src/bilevel/methods/forward.rs",
          "    for _ in 0..inner.steps {\n        let w = track(&state[..nw]);",
          "    for step in 0..inner.steps {\n        let w = track(&state[..nw]);"),
         ("src/bilevel/methods/forward.rs", "for (j, z) in tangents.iter_mut().enumerate() {",
          "for (j, z) in tangents.iter_mut().enumerate().filter(|_| step > 0) {")],
        ["--test", "host_references", "unrolled_methods_match_a_host_unroll_on_hyper_cleaning"],
    ),
    Bug(
        "one_step_takes_the_outer_gradient_at_w",
        [("src/bilevel/methods/one_step.rs",
          "let (loss, u, gl) = outer_grads(problem, &w_virtual, lambda)?;",
          "let (loss, u, gl) = outer_grads(problem, &w, lambda)?;")],
        ["--test", "host_references", "one_step"],
    ),
    Bug(
        "mse_rule_with_detached_operands",
        [("src/autodiff/rules.rs", "let d = x(0).sub(x(1))?.mul(g)?.scale(2.0 / n)?;",
          "let d = x(0).detach().sub(&x(1).detach())?.mul(g)?.scale(2.0 / n)?;")],
        ["--lib", "autodiff::second_order_tests"],
    ),
    Bug(
        "softmax_rule_with_a_detached_output",
        [("src/autodiff/rules.rs", "            let gy = g.mul(y)?;\n            vec![Some(gy.sub(&y.mul(&gy.sum_axis(last, true)?)?)?)]",
          "            let y = &y.detach();\n            let gy = g.mul(y)?;\n            vec![Some(gy.sub(&y.mul(&gy.sum_axis(last, true)?)?)?)]")],
        ["--lib", "autodiff::second_order_tests"],
    ),
    # Once silent: a rule read the gradient's storage in place of an output not kept.
    Bug(
        "sqrt_rule_without_its_output",
        [("src/autodiff/rules.rs",
          "UnaryOp::Exp | UnaryOp::Sqrt | UnaryOp::Tanh | UnaryOp::Sigmoid | UnaryOp::Recip => true,",
          "UnaryOp::Exp | UnaryOp::Tanh | UnaryOp::Sigmoid | UnaryOp::Recip => true,\n        UnaryOp::Sqrt => false,")],
        ["--lib", "autodiff::"],
    ),
    Bug(
        "ge_is_strict_on_the_cpu",
        [("src/backend/cpu/binary.rs", "BinaryOp::Ge => mask(a >= b),", "BinaryOp::Ge => mask(a > b),")],
        ["--lib", "ops::binary::tests::comparisons_and_extrema_with_ties"],
    ),
    # Needs a GPU adapter (lavapipe in CI): without one the test skips and this survives.
    Bug(
        "ge_is_strict_in_wgsl",
        [("shaders/binary.wgsl", "vec4<f32>(1.0), u >= v); }", "vec4<f32>(1.0), u > v); }")],
        ["--lib", "ops::binary::tests::comparisons_and_extrema_with_ties"],
    ),
    # The same bug in the kernels elementwise fusion generates (on by default).
    Bug(
        "ge_is_strict_in_fused_wgsl",
        [("src/backend/gpu/fusion.rs", 'BinaryOp::Ge => cmp(">="),', 'BinaryOp::Ge => cmp(">"),')],
        ["--lib", "ops::binary::tests::comparisons_and_extrema_with_ties"],
    ),
    # A forced kernel variant must be the one that runs, or the variant tests test the
    # default twice. Needs a GPU adapter.
    Bug(
        "forced_kernel_variant_is_ignored",
        [("src/backend/gpu/registry.rs",
          "            NONE => self.defaults[id as usize],\n            i => i,",
          "            _ => self.defaults[id as usize],")],
        ["--lib", "backend::gpu::registry::tests::forcing_a_variant"],
    ),
    Bug(
        "hyper_cleaning_regularises_the_bias",
        [("src/problems/classification.rs",
          "ce.add(&w[0].sqnorm()?.scale(0.5 * self.mu)?)",
          "ce.add(&w[0].sqnorm()?.add(&w[1].sqnorm()?)?.scale(0.5 * self.mu)?)")],
        ["--test", "host_references", "hyper_cleaning_losses"],
    ),
    Bug(
        "logistic_drops_the_half",
        [("src/problems/classification.rs", "ce.add(&reg.scale(0.5)?)", "ce.add(&reg)")],
        ["--test", "host_references", "logistic_loss"],
    ),
    Bug(
        "hoag_ignores_its_tolerance_schedule",
        [("src/bilevel/hoag.rs", "let eps = c.eps0 * c.decay.powi(k as i32);",
          "let eps = c.eps0;")],
        ["--test", "host_references", "hoag_follows"],
    ),
    Bug(
        "hoag_solves_cg_to_the_first_tolerance",
        [("src/bilevel/hoag.rs", "            tol: Some(eps),", "            tol: Some(c.eps0),")],
        ["--test", "host_references", "hoag_solves"],
    ),
    Bug(
        "adam_without_bias_correction",
        [("src/bilevel/outer.rs",
          "let c1 = 1.0 - beta1.powi(st.t);\n            let c2 = 1.0 - beta2.powi(st.t);",
          "let c1 = 1.0;\n            let c2 = 1.0;")],
        ["--test", "host_references", "sgd_and_adam"],
    ),
    # The tape once imported autodiff, which imported the ops, which imported the tape.
    Bug(
        "the_tape_imports_a_higher_layer",
        [("src/tensor/tape.rs", "use super::{Storage, Tensor};\n",
          "use super::{Storage, Tensor};\n#[allow(unused_imports)]\nuse crate::autodiff::grad;\n")],
        ["--test", "layering", "layers_import_only_downward"],
    ),
]


def run(args, log):
    log.write(f"$ {' '.join(args)}\n")
    log.flush()
    return subprocess.run(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode


def plant(bug, log):
    """Returns CAUGHT, SURVIVED or STALE (with a reason)."""
    originals = {}
    try:
        for path, old, new in bug.edits:
            full = os.path.join(ROOT, path)
            if full not in originals:
                originals[full] = open(full, encoding="utf-8").read()
            current = open(full, encoding="utf-8").read()
            if current.count(old) != 1:
                return "STALE", f"{path}: the text to mutate occurs {current.count(old)} times"
            with open(full, "w", encoding="utf-8") as f:
                f.write(current.replace(old, new))
        test = ["cargo", "test", "-q"] + bug.test[:-1]
        filters = bug.test[-1:]
        if run(test + ["--no-run"], log) != 0:
            return "STALE", "the planted bug does not compile"
        if run(test + ["--"] + filters, log) != 0:
            return "CAUGHT", ""
        return "SURVIVED", f"cargo test {' '.join(bug.test)} passed with the bug"
    finally:
        for full, text in originals.items():
            with open(full, "w", encoding="utf-8") as f:
                f.write(text)


def main(argv):
    if "--list" in argv:
        for b in BUGS:
            print(b.name)
        return 0
    wanted = [a for a in argv if not a.startswith("-")]
    unknown = set(wanted) - {b.name for b in BUGS}
    if unknown:
        print(f"unknown bug(s): {', '.join(sorted(unknown))} (see --list)")
        return 2
    bugs = [b for b in BUGS if not wanted or b.name in wanted]
    log_path = os.path.join(ROOT, "target", "planted-bugs.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    failures = 0
    with open(log_path, "w", encoding="utf-8") as log:
        for bug in bugs:
            start = time.time()
            verdict, why = plant(bug, log)
            failures += verdict != "CAUGHT"
            extra = f"  ({why})" if why else ""
            print(f"{verdict:<9} {bug.name}  [{time.time() - start:.0f} s]{extra}", flush=True)
    print(f"{len(bugs) - failures} of {len(bugs)} planted bugs caught; log: {log_path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
