//! Helpers shared by the tests of the opt-in plan settings (`fewer_rounds.rs`,
//! `compact_comparisons.rs`).

use sotto_core::local::{no_client, run_local, LocalTransport};
use sotto_core::session::{Dealer, Server};
use sotto_model::private::{deal_load, load, ServerWeights};
use sotto_model::Plan;

fn m2c(e: sotto_model::ModelError) -> sotto_core::CoreError {
    sotto_core::CoreError::Protocol(e.to_string())
}

/// Loads a model alone (no prediction): the helper with `helper`'s plan, each server with its
/// own plan and weights. What each server's load returned: `None` when it loaded, else its
/// error message.
pub fn load_errors(
    helper: &Plan,
    servers: [&Plan; 2],
    weights: &[ServerWeights; 2],
    private: bool,
) -> [Option<String>; 2] {
    let run = run_local(
        |mut d: Dealer<LocalTransport>| async move {
            deal_load(&mut d, helper, private).await.map_err(m2c)?;
            Ok(())
        },
        |mut s: Server<LocalTransport>| async move {
            let i = s.id().index();
            Ok(load(&mut s, servers[i], weights[i].clone())
                .await
                .err()
                .map(|e| e.to_string()))
        },
        no_client,
        true,
    )
    .expect("runs");
    [run.p0, run.p1]
}
