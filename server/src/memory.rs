//! How much of a model's helper material one in-process run (`sotto eval`) may hold, and
//! what to do when the whole of it does not fit: stream the session and split the batch.
//!
//! In one process both servers hold their material: a session dealt whole is held about
//! four times over at its peak (each server's received messages and their parsed form), a
//! streamed one twice its window (one per server) plus four times its heaviest step.

use sotto_model::Plan;

/// Default of `--memory-budget-mb`.
pub const DEFAULT_BUDGET_MB: u64 = 4096;

/// How a run of a model fits a memory budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// Inputs per private prediction.
    pub batch: usize,
    /// The helper's window when the session is streamed.
    pub window: Option<usize>,
    /// The batch asked for.
    pub asked: usize,
    /// Material per input (per server).
    pub per_input: u64,
}

impl Fit {
    /// What a user should be told about the fit, if anything changed.
    pub fn note(&self) -> Option<String> {
        let mib = |b: u64| b as f64 / (1 << 20) as f64;
        let w = self.window?;
        Some(format!(
            "streaming the helper's material ({:.1} MiB per input and server, {:.0} MiB window){}",
            mib(self.per_input),
            mib(w as u64),
            if self.batch < self.asked {
                format!(
                    "; batches of {} instead of {} to fit --memory-budget-mb",
                    self.batch, self.asked
                )
            } else {
                String::new()
            }
        ))
    }
}

/// Fits runs of `asked` inputs of `plan` to `budget` bytes: whole sessions when they fit,
/// else streamed ones with smaller batches if need be; an error naming the budget needed
/// when not even one input's heaviest step fits.
pub fn fit(plan: &Plan, private: bool, asked: usize, budget: u64) -> Result<Fit, String> {
    let asked = asked.max(1);
    let per_input = plan.material_per_input(private);
    let whole = per_input.saturating_mul(4);
    if whole.saturating_mul(asked as u64) <= budget {
        return Ok(Fit {
            batch: asked,
            window: None,
            asked,
            per_input,
        });
    }
    // Streamed: a quarter of the budget for the two windows, the rest for the step being
    // run (four times its material at most, in the two servers).
    let window = budget / 8;
    let step_of = |plan: &Plan| plan.largest_step_material(private).max(1).saturating_mul(4);
    let step = step_of(plan);
    let batch = ((budget - 2 * window) / step).min(asked as u64) as usize;
    if batch == 0 {
        let need = |plan: &Plan| {
            let step = step_of(plan);
            (step + step / 3).div_ceil(1 << 20) + 1
        };
        // Where one-bit keys make the heaviest step smaller (a max pool), say so.
        let compact = plan.clone().with_compact_comparisons(true);
        let hint = if !plan.compact_comparisons && need(&compact) < need(plan) {
            format!(
                " (with --compact-comparisons, one-bit keys for max pools at one more round per level, it needs {:.0} MiB: --memory-budget-mb {} or more)",
                compact.largest_step_material(private) as f64 / (1 << 20) as f64,
                need(&compact)
            )
        } else {
            String::new()
        };
        return Err(format!(
            "one input's heaviest step needs {:.0} MiB of helper material per server, more than --memory-budget-mb {} allows{hint}: give at least --memory-budget-mb {}",
            plan.largest_step_material(private) as f64 / (1 << 20) as f64,
            budget >> 20,
            need(plan)
        ));
    }
    Ok(Fit {
        batch,
        window: Some(window as usize),
        asked,
        per_input,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sotto_core::fixed::FixedPoint;

    fn plan() -> Plan {
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/cnn.onnx"))
            .expect("bundled cnn");
        let m = sotto_model::import(&bytes).expect("imports");
        Plan::new(&m, FixedPoint::default(), 1.0).expect("plans")
    }

    #[test]
    fn whole_when_it_fits_streamed_and_split_when_not_refused_below_one_step() {
        let p = plan();
        let per = p.material_per_input(true);
        let step = p.largest_step_material(true);
        // Plenty: whole sessions of the asked batch.
        let f = fit(&p, true, 10, per * 40).expect("fits");
        assert_eq!((f.batch, f.window), (10, None));
        assert!(f.note().is_none());
        // Not whole, but a streamed batch of 10 fits.
        let budget = per * 40 - 1;
        let f = fit(&p, true, 10, budget).expect("fits streamed");
        assert_eq!(f.window, Some((budget / 8) as usize));
        assert!(f.batch <= 10 && f.batch >= 1);
        assert!(f.note().expect("a note").contains("streaming"));
        // Tight: smaller batches, each within the budget.
        let budget = step * 4 * 3 * 4 / 3 + 10;
        let f = fit(&p, true, 100, budget).expect("fits split");
        assert!(f.batch < 100 && f.batch >= 1, "{f:?}");
        let w = f.window.expect("streamed") as u64;
        assert!(2 * w + 4 * step * f.batch as u64 <= budget);
        assert!(f
            .note()
            .expect("a note")
            .contains(&format!("batches of {}", f.batch)));
        // Below one input's heaviest step: refused, naming what would do.
        let e = fit(&p, true, 1, step).expect_err("too small");
        assert!(e.contains("--memory-budget-mb"), "{e}");
        // ... and the budget it names is enough.
        let need: u64 = e
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a number at the end");
        assert_eq!(fit(&p, true, 1, need << 20).expect("enough").batch, 1);
        // The bundled CNN's heaviest step is its max pool: the message names the setting
        // that shrinks it, and the budget it names for it is enough with it.
        assert!(e.contains("--compact-comparisons"), "{e}");
        let compact_need: u64 = e
            .split("--compact-comparisons")
            .nth(1)
            .and_then(|t| t.split("--memory-budget-mb ").nth(1))
            .and_then(|t| t.split(' ').next())
            .and_then(|v| v.parse().ok())
            .expect("a budget for the setting");
        assert!(compact_need < need, "{e}");
        let compact = p.clone().with_compact_comparisons(true);
        assert_eq!(
            fit(&compact, true, 1, compact_need << 20)
                .expect("enough")
                .batch,
            1
        );
        // With the setting on, no hint.
        let e = fit(&compact, true, 1, 1 << 10).expect_err("too small");
        assert!(!e.contains("--compact-comparisons"), "{e}");
    }
}
