//! `sotto bench` over simulated links (`--link-delay-ms`): every link is delayed, so a
//! private prediction takes at least its rounds' worth of one-way delays.

use std::process::Command;

fn repo() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `sotto bench` of 5 batch-1 requests from one client, with `extra` flags: its JSON.
fn bench(extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_sotto"))
        .current_dir(repo())
        .args([
            "bench",
            "--requests",
            "5",
            "--batch",
            "1",
            "--concurrency",
            "1",
        ])
        .args(extra)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "sotto bench failed:\n{stderr}");
    serde_json::from_slice(&out.stdout).expect("sotto bench prints one JSON object")
}

#[test]
fn a_delayed_bench_takes_at_least_its_rounds_of_delay() {
    let delay_ms = 5.0;
    let v = bench(&["--link-delay-ms", "5"]);
    assert_eq!(v["links"]["simulated"], true);
    assert_eq!(v["links"]["rtt_ms"], 2.0 * delay_ms);
    assert_eq!(v["links"]["proxies"], 5, "one proxy per link");
    assert!(
        v["party_link_round_trip"].is_null(),
        "simulated links have a known delay: no probe"
    );
    let run = &v["runs"][0];
    assert_eq!(run["mode"], "pool_served");
    assert_eq!(run["requests"], 5);
    let rounds = run["online_rounds"].as_f64().expect("rounds");
    let median = run["median_ms"].as_f64().expect("median");
    let fastest = run["min_ms"].as_f64().expect("min");
    let floor = run["latency_floor_ms"].as_f64().expect("floor");
    let rounds_rtt = run["rounds_x_rtt_ms"].as_f64().expect("rounds × RTT");
    eprintln!(
        "median {median:.1} ms, fastest {fastest:.1} ms, {rounds} rounds: floor (rounds + 2) × {delay_ms} ms = {floor} ms, rounds × RTT = {rounds_rtt} ms"
    );
    assert!(rounds >= 1.0);
    assert_eq!(floor, (rounds + 2.0) * delay_ms);
    assert_eq!(rounds_rtt, rounds * 2.0 * delay_ms);
    // Every request crosses the client's links twice and the P0–P1 link once per round.
    assert!(
        fastest >= floor,
        "the fastest request took {fastest} ms, under (rounds + 2) one-way delays ({floor} ms)"
    );
    // The rounds' delays are what a request mostly waits for on this model (it computes in
    // about 1 ms on loopback): far from the floor would mean the proxies stall.
    assert!(
        median < 4.0 * floor + 100.0,
        "median {median} ms against a floor of {floor} ms"
    );
}

#[test]
fn an_unshaped_bench_reports_the_servers_link_round_trip() {
    let v = bench(&[]);
    let probe = &v["party_link_round_trip"];
    let us = |k: &str| {
        probe[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} in {probe}"))
    };
    let (p10, median, p90) = (us("p10_us"), us("median_us"), us("p90_us"));
    eprintln!("P0-P1 round trip: p10 {p10:.1} us, median {median:.1} us, p90 {p90:.1} us");
    assert_eq!(probe["round_trips"], 200);
    assert_eq!(probe["message_bytes"], 1024);
    assert!(p10 > 0.0 && p10 <= median && median <= p90, "{probe}");
    // A loopback round trip through two idle parties: well under the batch-1 prediction,
    // which takes several of them.
    let prediction_us = v["runs"][0]["median_ms"].as_f64().expect("median") * 1e3;
    assert!(
        median < prediction_us,
        "{median} us against a {prediction_us} us prediction"
    );
}
