//! The Nexmark benchmark compares like with like: each query's WASM pipes
//! (the `nexmark` guest) give exactly the output of its native steps, on
//! the same generated input, around the same native windows.

use std::path::Path;

use plumber::runtime::Runtime;
use plumber::streams::channel_sink;
use plumber::Event;
use plumber_cli::bench::nexmark::{builder, NexmarkSource, Query};
use plumber_cli::bench::Engine;
use plumber_tests::{cache_dir, guest};

/// Runs `query` over `events` generated events and returns what reached the sink.
async fn run(query: Query, engine: Engine, events: u64, guest: &Path) -> Vec<Event> {
    let rt = Runtime::new(Some(cache_dir())).expect("runtime");
    let (sink, mut out) = channel_sink(1_000_000);
    // A batch size that does not divide the input: the last batch is partial.
    let source = NexmarkSource::new(events, 42);
    let report = query
        .add_steps(builder("nexmark-test", source, 999, &rt), engine, guest)
        .to(sink)
        .run()
        .await
        .unwrap_or_else(|e| panic!("{} {engine:?}: {e}", query.name()));
    assert_eq!(report.events_in, events);
    let mut received = Vec::new();
    while let Ok(event) = out.try_recv() {
        received.push(event);
    }
    assert_eq!(report.events_out, received.len() as u64);
    received
}

/// A generated event's comma-separated fields.
fn fields_of(event: &Event) -> Vec<String> {
    String::from_utf8(event.value.clone())
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn wasm_and_native_queries_give_the_same_output() {
    let guest = guest("nexmark");
    for query in Query::ALL {
        // The windowed queries get 12 s of event time: two tumbling windows, several sliding ones.
        let events = match query {
            Query::Q5 | Query::Q7 => 120_000,
            _ => 20_000,
        };
        let native = run(query, Engine::Native, events, &guest).await;
        assert!(!native.is_empty(), "{}: no output", query.name());
        // Both crossings: the packed buffer (the default) and the canonical ABI.
        for engine in [Engine::Wasm, Engine::WasmCanonical] {
            let wasm = run(query, engine, events, &guest).await;
            assert_eq!(
                native.len(),
                wasm.len(),
                "{} {engine:?}: event counts differ",
                query.name()
            );
            for (i, (n, w)) in native.iter().zip(&wasm).enumerate() {
                assert_eq!(
                    n,
                    w,
                    "{} {engine:?}: event {i} differs: native {:?}, wasm {:?}",
                    query.name(),
                    String::from_utf8_lossy(&n.value),
                    String::from_utf8_lossy(&w.value)
                );
            }
        }
    }
}

#[tokio::test]
async fn aggregated_q5_and_q7_give_the_buffering_output() {
    // The rows `nexmark q5 (aggregate)` and `nexmark q7 (aggregate)`: the
    // window keeps the `nexmark-aggregate` guest's accumulators (per pane
    // for q5) instead of the bids, and gives exactly the native lines.
    let guest = guest("nexmark");
    let aggregator = plumber_tests::guest("nexmark-aggregate");
    for query in Query::AGGREGATED {
        let events = 120_000;
        let native = run(query, Engine::Native, events, &guest).await;
        assert!(!native.is_empty(), "{}: no output", query.name());
        let rt = Runtime::new(Some(cache_dir())).expect("runtime");
        let (sink, mut out) = channel_sink(1_000_000);
        let report = query
            .add_aggregated_steps(
                builder(
                    "nexmark-aggregate-test",
                    NexmarkSource::new(events, 42),
                    999,
                    &rt,
                ),
                &guest,
                &aggregator,
            )
            .to(sink)
            .run()
            .await
            .unwrap_or_else(|e| panic!("{} aggregated: {e}", query.name()));
        assert_eq!(report.events_in, events);
        let mut aggregated = Vec::new();
        while let Ok(event) = out.try_recv() {
            aggregated.push(event);
        }
        let lines = |events: &[Event]| -> Vec<String> {
            events
                .iter()
                .map(|e| format!("{:?} {}", e.timestamp, String::from_utf8_lossy(&e.value)))
                .collect()
        };
        assert_eq!(lines(&aggregated), lines(&native), "{}", query.name());
        assert_eq!(aggregated, native, "{}", query.name());
    }
}

#[tokio::test]
async fn the_windowed_queries_emit_one_result_set_per_window() {
    let guest = guest("nexmark");
    // 12 s of event time: q7 fires [0, 10 s) and [10 s, 20 s) from the base time.
    let q7 = run(Query::Q7, Engine::Wasm, 120_000, &guest).await;
    let mut ends: Vec<u64> = q7.iter().filter_map(|e| e.timestamp).collect();
    ends.dedup();
    let base = plumber_cli::bench::nexmark::BASE_TIME_MS;
    assert_eq!(ends, [base + 10_000, base + 20_000]);
    // q5: sliding windows of 10 s every 2 s that cover 0..12 s: starts from -8 s to 10 s.
    let q5 = run(Query::Q5, Engine::Wasm, 120_000, &guest).await;
    let mut starts: Vec<u64> = q5
        .iter()
        .map(|e| {
            let value = String::from_utf8_lossy(&e.value);
            value.split(',').next().unwrap().parse().unwrap()
        })
        .collect();
    starts.dedup();
    let expected: Vec<u64> = (0..10).map(|k| base - 8_000 + k * 2_000).collect();
    assert_eq!(starts, expected);
}

/// q3 (auctions of category 10 joined with their sellers of OR, ID or CA)
/// against a reference computed here from the generated events by nested
/// loops: every auction whose seller appears anywhere in the input, in
/// whichever order the two came.
#[tokio::test]
async fn q3_joins_every_auction_with_its_seller_whichever_came_first() {
    let guest = guest("nexmark");
    let events = 50_000;
    let input = run(Query::Q0, Engine::Native, events, &guest).await;
    let persons: Vec<Vec<String>> = input
        .iter()
        .filter(|e| e.value.starts_with(b"P,"))
        .map(fields_of)
        .collect();
    let auctions: Vec<Vec<String>> = input
        .iter()
        .filter(|e| e.value.starts_with(b"A,"))
        .map(fields_of)
        .collect();
    let mut expected = Vec::new();
    let mut waited = 0;
    for (position, auction) in auctions.iter().enumerate() {
        if auction[9] != "10" {
            continue;
        }
        for person in &persons {
            if person[1] == auction[8] && ["OR", "ID", "CA"].contains(&person[6].as_str()) {
                expected.push(format!(
                    "{},{},{},{}",
                    person[2], person[5], person[6], auction[1]
                ));
                // Whether the seller came after the auction.
                let person_at: u64 = person[7].parse().unwrap();
                let auction_at: u64 = auctions[position][6].parse().unwrap();
                if person_at > auction_at {
                    waited += 1;
                }
            }
        }
    }
    expected.sort();
    assert!(expected.len() > 50, "{} answers", expected.len());
    eprintln!(
        "{} answers, {waited} of them for a seller who came after the auction",
        expected.len()
    );
    for engine in [Engine::Native, Engine::Wasm] {
        let mut got: Vec<String> = run(Query::Q3, engine, events, &guest)
            .await
            .iter()
            .map(|e| String::from_utf8(e.value.clone()).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, expected, "q3 {engine:?}");
    }
}

/// q4 (average final price per category) and q6 (average of a seller's
/// last 10 final prices) against a reference computed here from the
/// generated events: each auction's final price is the highest bid for it
/// between its time and `expires` (both included); it closes once an event
/// after `expires` came (so only auctions that expired before the input's
/// last event), in the order of `expires`, then id; auctions without a bid
/// are not counted.
#[tokio::test]
async fn q4_and_q6_follow_each_auction_to_its_close() {
    let guest = guest("nexmark");
    let events = 50_000;
    let input = run(Query::Q0, Engine::Native, events, &guest).await;
    let last = input.iter().filter_map(|e| e.timestamp).max().unwrap();
    let bids: Vec<Vec<String>> = input
        .iter()
        .filter(|e| e.value.starts_with(b"B,"))
        .map(fields_of)
        .collect();
    let number = |text: &str| text.parse::<u64>().unwrap();
    // (expires, id, category, seller, final price)
    let mut closed = Vec::new();
    for auction in input
        .iter()
        .filter(|e| e.value.starts_with(b"A,"))
        .map(fields_of)
    {
        let (id, start, expires) = (
            number(&auction[1]),
            number(&auction[6]),
            number(&auction[7]),
        );
        if expires >= last {
            continue;
        }
        let best = bids
            .iter()
            .filter(|b| number(&b[1]) == id && (start..=expires).contains(&number(&b[6])))
            .map(|b| number(&b[3]))
            .max();
        if let Some(best) = best {
            closed.push((expires, id, number(&auction[9]), number(&auction[8]), best));
        }
    }
    closed.sort();
    assert!(closed.len() > 500, "{} closed auctions", closed.len());
    let mut q4 = Vec::new();
    let mut q6 = Vec::new();
    let mut categories: std::collections::HashMap<u64, Vec<u64>> = Default::default();
    let mut sellers: std::collections::HashMap<u64, Vec<u64>> = Default::default();
    for &(_, _, category, seller, best) in &closed {
        let prices = categories.entry(category).or_default();
        prices.push(best);
        q4.push(format!(
            "{category},{}",
            prices.iter().sum::<u64>() / prices.len() as u64
        ));
        let prices = sellers.entry(seller).or_default();
        prices.push(best);
        let recent = &prices[prices.len().saturating_sub(10)..];
        q6.push(format!(
            "{seller},{}",
            recent.iter().sum::<u64>() / recent.len() as u64
        ));
    }
    eprintln!(
        "{} closed auctions of {} sellers",
        closed.len(),
        sellers.len()
    );
    for (query, expected) in [(Query::Q4, q4), (Query::Q6, q6)] {
        for engine in [Engine::Native, Engine::Wasm] {
            let got: Vec<String> = run(query, engine, events, &guest)
                .await
                .iter()
                .map(|e| String::from_utf8(e.value.clone()).unwrap())
                .collect();
            assert_eq!(got, expected, "{} {engine:?}", query.name());
        }
    }
}

/// q11 (a session per bidder, closed after 10 s without a bid) against
/// sessions computed here: each bidder's bids in time order, a new session
/// where a bid comes 10 s or more after the previous one; a session spans
/// its first bid to its last bid + 10 s. The input's open sessions close at
/// its end.
#[tokio::test]
async fn q11_counts_each_bidders_sessions() {
    let guest = guest("nexmark");
    let events = 300_000;
    let input = run(Query::Q0, Engine::Native, events, &guest).await;
    let mut by_bidder: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
    for event in input.iter().filter(|e| e.value.starts_with(b"B,")) {
        let text = String::from_utf8(event.value.clone()).unwrap();
        let fields: Vec<&str> = text.split(',').collect();
        by_bidder
            .entry(fields[2].parse().unwrap())
            .or_default()
            .push(event.timestamp.unwrap());
    }
    let gap = 10_000;
    let mut expected = Vec::new();
    let mut several = 0;
    for (bidder, mut times) in by_bidder {
        times.sort_unstable();
        let mut start = times[0];
        let mut count = 0;
        let mut last = start;
        let mut sessions = 0;
        for time in times {
            if time >= last + gap {
                expected.push(format!("{bidder},{count},{start},{}", last + gap));
                sessions += 1;
                start = time;
                count = 0;
            }
            count += 1;
            last = time;
        }
        expected.push(format!("{bidder},{count},{start},{}", last + gap));
        if sessions > 0 {
            several += 1;
        }
    }
    expected.sort();
    // The generator's bidders are active for about 5 s of event time (1,000
    // active people, 200 new ones per second), so with the 10 s gap each
    // bidder has one session; what this compares is each session's count
    // and bounds, and that every bidder's session fires once.
    eprintln!(
        "{} sessions; {several} bidders with more than one",
        expected.len()
    );
    for engine in [Engine::Native, Engine::Wasm] {
        let mut got: Vec<String> = run(Query::Q11, engine, events, &guest)
            .await
            .iter()
            .map(|e| String::from_utf8(e.value.clone()).unwrap())
            .collect();
        got.sort();
        assert_eq!(got.len(), expected.len(), "q11 {engine:?}");
        assert_eq!(got, expected, "q11 {engine:?}");
    }
}

/// `plumber bench --profile` names the guests' JIT code for `perf`: the
/// process's perf map (`/tmp/perf-<pid>.map`) lists the WASM functions.
/// Without `--profile` there is none.
#[test]
fn bench_profile_writes_a_perf_map_of_the_guests_code() {
    let guests = guest("nexmark").parent().unwrap().to_path_buf();
    let run = |profile: bool| {
        let mut command = std::process::Command::new(plumber_tests::plumber_binary());
        command
            .arg("--cache-dir")
            .arg(cache_dir())
            .args(["bench", "--in-process", "--scenario", "nexmark"])
            .args(["--only", "nexmark q1/wasm", "--scale", "0.001"])
            .arg("--guests")
            .arg(&guests);
        if profile {
            command.arg("--profile");
        }
        let child = command.stdout(std::process::Stdio::null()).spawn().unwrap();
        let pid = child.id();
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{output:?}");
        let map = std::path::PathBuf::from(format!("/tmp/perf-{pid}.map"));
        let text = std::fs::read_to_string(&map).ok();
        let _ = std::fs::remove_file(&map);
        text
    };
    let text = run(true).expect("a perf map");
    let guest_functions = text.lines().filter(|l| l.contains("wasm[")).count();
    assert!(
        guest_functions > 100,
        "{guest_functions} WASM functions named"
    );
    assert_eq!(run(false), None, "a perf map without --profile");
}

/// q8 (persons who opened an auction in the 10-second window they joined
/// in: a native windowed join of persons and auctions) against a reference
/// computed here by nested loops over the generated events.
#[tokio::test]
async fn q8_finds_the_new_persons_who_opened_an_auction_in_their_window() {
    let guest = guest("nexmark");
    let events = 120_000;
    let input = run(Query::Q0, Engine::Native, events, &guest).await;
    let window = |time: &str| time.parse::<u64>().unwrap() / 10_000 * 10_000;
    let persons: Vec<Vec<String>> = input
        .iter()
        .filter(|e| e.value.starts_with(b"P,"))
        .map(fields_of)
        .collect();
    let auctions: Vec<Vec<String>> = input
        .iter()
        .filter(|e| e.value.starts_with(b"A,"))
        .map(fields_of)
        .collect();
    let mut expected: Vec<String> = persons
        .iter()
        .filter(|p| {
            auctions
                .iter()
                .any(|a| a[8] == p[1] && window(&a[6]) == window(&p[7]))
        })
        .map(|p| format!("{},{},{}", p[1], p[2], window(&p[7])))
        .collect();
    expected.sort();
    assert!(expected.len() > 20, "{} answers", expected.len());
    eprintln!("{} of {} persons answered", expected.len(), persons.len());
    for engine in [Engine::Native, Engine::Wasm] {
        let mut got: Vec<String> = run(Query::Q8, engine, events, &guest)
            .await
            .iter()
            .map(|e| String::from_utf8(e.value.clone()).unwrap())
            .collect();
        got.sort();
        assert_eq!(got, expected, "q8 {engine:?}");
    }
}
