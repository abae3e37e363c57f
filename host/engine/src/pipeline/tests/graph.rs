//! Graphs: the shape check (names, cycles, dangling outputs), the union
//! with its input header, fan-out, routing, and a restart that seeks each
//! source to its own position.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::checkpoint::{CheckpointPolicy, Position};
use crate::pipeline::{
    GraphPlace, GraphShape, GraphStepShape, Pipeline, PipelineError, RoutePredicate, Router,
    INPUT_HEADER,
};
use crate::state::{MemoryState, SharedState};
use crate::step::NativeStep;
use crate::streams::{channel_sink, ArraySource};
use crate::Event;

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|name| (*name).to_owned()).collect()
}

/// A step of a test shape: its name, inputs and routes (a router's).
type TestNode<'a> = (&'a str, Vec<String>, Option<Vec<&'static str>>);

/// A shape from `(name, inputs, routes)` steps and `(name, inputs)` sinks.
fn check(
    sources: &[&str],
    nodes: &[TestNode<'_>],
    sinks: &[(&str, Vec<String>)],
) -> Result<(), crate::pipeline::GraphError> {
    let shape = GraphShape {
        sources: sources.to_vec(),
        nodes: nodes
            .iter()
            .map(|(name, inputs, routes)| GraphStepShape {
                name,
                inputs,
                routes: routes.clone(),
            })
            .collect(),
        sinks: sinks
            .iter()
            .map(|(name, inputs)| (*name, inputs.as_slice()))
            .collect(),
    };
    shape.check()
}

#[test]
fn a_well_formed_graph_passes_the_check() {
    check(
        &["a", "b"],
        &[
            ("count", names(&["a", "b"]), None),
            ("split", names(&["count"]), Some(vec!["big", "rest"])),
        ],
        &[
            ("all", names(&["count", "a"])),
            ("big", names(&["split.big"])),
            ("rest", names(&["split.rest", "b"])),
        ],
    )
    .unwrap();
}

#[test]
fn unknown_inputs_are_refused_where_they_are_named() {
    let error = check(
        &["bids"],
        &[("count", names(&["bids"]), None)],
        &[("alerts", names(&["count", "bidz"]))],
    )
    .unwrap_err();
    assert_eq!(error.place, GraphPlace::SinkInput(0, 1));
    assert!(error.message.contains("unknown input `bidz`"), "{error}");
    assert!(error.message.contains("known: `bids`, `count`"), "{error}");

    let error = check(
        &["a"],
        &[("split", names(&["a"]), Some(vec!["x"]))],
        &[("s", names(&["split"]))],
    )
    .unwrap_err();
    assert_eq!(error.place, GraphPlace::SinkInput(0, 0));
    assert!(error.message.contains("is a router"), "{error}");

    let error = check(
        &["a"],
        &[("p", names(&["a", "a"]), None)],
        &[("s", names(&["p"]))],
    )
    .unwrap_err();
    assert_eq!(error.place, GraphPlace::NodeInput(0, 1));
    assert!(error.message.contains("named twice"), "{error}");

    let error = check(
        &["a"],
        &[("p", Vec::new(), None)],
        &[("s", names(&["a", "p"]))],
    )
    .unwrap_err();
    assert_eq!(error.place, GraphPlace::NodeFrom(0));
}

#[test]
fn cycles_are_refused_with_the_cycle_named() {
    let error = check(
        &["a"],
        &[
            ("x", names(&["a", "z"]), None),
            ("y", names(&["x"]), None),
            ("z", names(&["y"]), None),
        ],
        &[("s", names(&["z"]))],
    )
    .unwrap_err();
    assert!(
        error.message.contains("`x` → `y` → `z` → `x`")
            || error.message.contains("`y` → `z` → `x` → `y`")
            || error.message.contains("`z` → `x` → `y` → `z`"),
        "{error}"
    );
    assert!(
        matches!(error.place, GraphPlace::NodeInput(_, _)),
        "{error:?}"
    );

    // A step reading itself.
    let error = check(
        &["a"],
        &[("x", names(&["a", "x"]), None)],
        &[("s", names(&["x"]))],
    )
    .unwrap_err();
    assert_eq!(error.place, GraphPlace::NodeInput(0, 1));
    assert!(error.message.contains("cycle"), "{error}");
}

#[test]
fn dangling_outputs_and_unread_sources_are_refused() {
    let error = check(
        &["a"],
        &[("p", names(&["a"]), None), ("q", names(&["a"]), None)],
        &[("s", names(&["p"]))],
    )
    .unwrap_err();
    assert_eq!(error.place, GraphPlace::Node(1));
    assert!(error.message.contains("read by no step or sink"), "{error}");

    let error = check(&["a", "b"], &[], &[("s", names(&["a"]))]).unwrap_err();
    assert_eq!(error.place, GraphPlace::Source(1));

    let error = check(
        &["a"],
        &[("split", names(&["a"]), Some(vec!["x", "y"]))],
        &[("s", names(&["split.x"]))],
    )
    .unwrap_err();
    assert_eq!(error.place, GraphPlace::NodeRoute(0, 1));

    let error = check(
        &["a"],
        &[("a", names(&["a"]), None)],
        &[("s", names(&["a"]))],
    )
    .unwrap_err();
    assert_eq!(error.place, GraphPlace::Node(0));
    assert!(
        error.message.contains("also the name of a source"),
        "{error}"
    );

    assert_eq!(check(&[], &[], &[]).unwrap_err().place, GraphPlace::Sources);
    assert_eq!(
        check(&["a"], &[], &[]).unwrap_err().place,
        GraphPlace::Sinks
    );
}

fn drain(mut receiver: mpsc::Receiver<Event>) -> Vec<Event> {
    let mut events = Vec::new();
    while let Ok(event) = receiver.try_recv() {
        events.push(event);
    }
    events
}

fn header<'a>(event: &'a Event, name: &str) -> Option<&'a str> {
    event
        .headers
        .iter()
        .find(|(header, _)| header == name)
        .map(|(_, value)| value.as_str())
}

fn value(event: &Event) -> String {
    String::from_utf8_lossy(&event.value).into_owned()
}

/// Two sources into one step (the union, tagged), its output fanned out to
/// two sinks, and a router splitting it by a header the step sets.
#[tokio::test]
async fn a_union_is_tagged_fanned_out_and_routed() {
    let left: Vec<String> = (0..50).map(|n| format!("l{n}")).collect();
    let right: Vec<String> = (0..30).map(|n| format!("r{n}")).collect();
    let (all, all_rx) = channel_sink(1000);
    let (copy, copy_rx) = channel_sink(1000);
    let (big, big_rx) = channel_sink(1000);
    let (rest, rest_rx) = channel_sink(1000);
    // Marks events whose number is at least 20 as big.
    let size = NativeStep::map("size", |mut event: Event| {
        let number: u64 = value(&event)[1..].parse().unwrap_or(0);
        let size = if number >= 20 { "big" } else { "small" };
        event.headers.push(("size".to_owned(), size.to_owned()));
        event
    });
    let router = Router::new("split")
        .route("big", RoutePredicate::header_equals("size", "big"))
        .default_route("rest");
    let report = Pipeline::builder("graph")
        .batch_size(7)
        .source("left", ArraySource::from_strings(left.clone()))
        .source("right", ArraySource::from_strings(right.clone()))
        .then_from(["left", "right"], size)
        .route_from(["size"], router)
        .to_from("all", ["size"], all)
        .to_from("copy", ["size"], copy)
        .to_from("big", ["split.big"], big)
        .to_from("rest", ["split.rest"], rest)
        .run()
        .await
        .unwrap();
    assert_eq!(report.events_in, 80);

    // The reference: every input event once, tagged with its source.
    let mut expected: Vec<(String, String)> = left
        .iter()
        .map(|v| (v.clone(), "left".to_owned()))
        .chain(right.iter().map(|v| (v.clone(), "right".to_owned())))
        .collect();
    expected.sort();
    for receiver in [all_rx, copy_rx] {
        let mut got: Vec<(String, String)> = drain(receiver)
            .iter()
            .map(|e| (value(e), header(e, INPUT_HEADER).unwrap_or("").to_owned()))
            .collect();
        got.sort();
        assert_eq!(got, expected);
    }
    let number = |v: &str| v[1..].parse::<u64>().unwrap();
    let mut expected_big: Vec<String> = left
        .iter()
        .chain(&right)
        .filter(|v| number(v) >= 20)
        .cloned()
        .collect();
    let mut expected_rest: Vec<String> = left
        .iter()
        .chain(&right)
        .filter(|v| number(v) < 20)
        .cloned()
        .collect();
    expected_big.sort();
    expected_rest.sort();
    let mut got_big: Vec<String> = drain(big_rx).iter().map(value).collect();
    let mut got_rest: Vec<String> = drain(rest_rx).iter().map(value).collect();
    got_big.sort();
    got_rest.sort();
    assert_eq!(got_big, expected_big);
    assert_eq!(got_rest, expected_rest);

    // Each source's position is in the last checkpoint, by name.
    let Some(Position::Graph { sources, .. }) = report.last_checkpoint.map(|c| c.position) else {
        panic!("no graph position in the last checkpoint");
    };
    assert_eq!(
        sources,
        BTreeMap::from([
            ("left".to_owned(), Position::Offset(50)),
            ("right".to_owned(), Position::Offset(30)),
        ])
    );
}

/// A restart seeks each source to its own committed position: only the
/// events appended since come out.
#[tokio::test]
async fn a_restart_resumes_each_source_where_it_was() {
    let state: SharedState = Arc::new(MemoryState::new());
    let run = |left: usize, right: usize| {
        let state = state.clone();
        async move {
            let (sink, receiver) = channel_sink(1000);
            let left: Vec<String> = (0..left).map(|n| format!("l{n}")).collect();
            let right: Vec<String> = (0..right).map(|n| format!("r{n}")).collect();
            Pipeline::builder("resume")
                .state(state)
                .checkpoint(CheckpointPolicy::default())
                .source("left", ArraySource::from_strings(left))
                .source("right", ArraySource::from_strings(right))
                .then_from(["left", "right"], NativeStep::map("pass", |e| e))
                .to_from("out", ["pass"], sink)
                .run()
                .await
                .unwrap();
            let mut values: Vec<String> = drain(receiver).iter().map(value).collect();
            values.sort();
            values
        }
    };
    assert_eq!(run(3, 2).await.len(), 5);
    let mut expected = vec!["l3", "l4", "l5", "r2"];
    expected.sort_unstable();
    assert_eq!(run(6, 3).await, expected);
}

#[tokio::test]
async fn a_builder_that_mixes_a_line_and_a_graph_is_refused() {
    let (sink, _receiver) = channel_sink(10);
    let error = Pipeline::builder("mixed")
        .from(ArraySource::from_strings(["a"]))
        .source("b", ArraySource::from_strings(["b"]))
        .to_from("out", ["b"], sink)
        .run()
        .await
        .unwrap_err();
    assert!(
        matches!(&error, PipelineError::Incomplete { message, .. } if message.contains("not both")),
        "{error}"
    );
    let (sink, _receiver) = channel_sink(10);
    let error = Pipeline::builder("cycle")
        .source("a", ArraySource::from_strings(["a"]))
        .then_from(["a", "q"], NativeStep::map("p", |e| e))
        .then_from(["p"], NativeStep::map("q", |e| e))
        .to_from("out", ["q"], sink)
        .run()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("cycle"), "{error}");
}

/// A linear checkpoint cannot be resumed as a graph.
#[tokio::test]
async fn a_graph_refuses_a_linear_checkpoint() {
    let state: SharedState = Arc::new(MemoryState::new());
    Pipeline::builder("was-a-line")
        .state(state.clone())
        .from(ArraySource::from_strings(["a"]))
        .to(crate::streams::DiscardSink::new())
        .run()
        .await
        .unwrap();
    let (sink, _receiver) = channel_sink(10);
    let error = Pipeline::builder("was-a-line")
        .state(state)
        .source("a", ArraySource::from_strings(["a"]))
        .to_from("out", ["a"], sink)
        .run()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("linear pipeline"), "{error}");
}

/// Alignment: once an input's barrier has come, nothing more of that input
/// is read (a window's timer output sent after its barrier stays out of the
/// epoch) until every input's barrier has come; then one barrier goes on,
/// with the writes of both.
#[tokio::test]
async fn an_input_whose_barrier_came_is_held_until_the_others_come() {
    use crate::pipeline::graph_run::{Input, Inputs, Received};
    use crate::pipeline::stage::{Barrier, Message, Output};
    use crate::state::WriteSet;
    use crate::Batch;

    let (first, first_rx) = Output::channel(8, 8);
    let (second, second_rx) = Output::channel(8, 8);
    let mut inputs = Inputs::new(vec![
        Input::new("first", first_rx),
        Input::new("second", second_rx),
    ]);
    let (replies, _replied) = mpsc::unbounded_channel();
    let with_write = |key: &str| {
        let mut barrier = Barrier::shared(4, replies.clone());
        let mut writes = WriteSet::default();
        writes.insert(key.as_bytes().to_vec(), Some(b"1".to_vec()));
        barrier.writes.push(writes);
        barrier
    };
    // The first input: its barrier, then output of the next epoch.
    first.send(Message::Barrier(with_write("a"))).await.unwrap();
    first
        .send_batch(Batch::new(vec![Event::new("after the barrier")]))
        .await
        .unwrap();
    // The second: output of this epoch, then its barrier.
    second
        .send_batch(Batch::new(vec![Event::new("before the barrier")]))
        .await
        .unwrap();
    second
        .send(Message::Barrier(with_write("b")))
        .await
        .unwrap();

    let mut order = Vec::new();
    let mut aligned = None;
    while aligned.is_none() {
        match inputs.recv().await {
            Received::Message(index, Message::Barrier(barrier)) => {
                order.push(format!("barrier {index}"));
                aligned = inputs.align(index, barrier).unwrap();
            }
            Received::Message(index, Message::Data(batch, _)) => {
                order.push(format!("{index}: {}", value(&batch.events[0])));
            }
            Received::Message(..) => {}
            Received::Closed => panic!("closed"),
        }
    }
    assert_eq!(
        order,
        ["barrier 0", "1: before the barrier", "barrier 1"],
        "the first input was read past its barrier"
    );
    let aligned = aligned.unwrap();
    assert_eq!(aligned.epoch, 4);
    assert_eq!(aligned.writes.len(), 2, "the writes of both barriers");
    // Then the held input is read again.
    match inputs.recv().await {
        Received::Message(0, Message::Data(batch, _)) => {
            assert_eq!(value(&batch.events[0]), "after the barrier");
        }
        _ => panic!("expected the first input's batch"),
    }
}

/// A step that fails stops the whole graph with its error (no stage waits
/// for a barrier that cannot come).
#[tokio::test]
async fn a_failing_step_stops_the_graph_with_its_error() {
    let (sink, _receiver) = channel_sink(10_000);
    let (copy, _copy_receiver) = channel_sink(10_000);
    let values: Vec<String> = (0..2_000).map(|n| n.to_string()).collect();
    let mut seen = 0;
    let failing = NativeStep::batch("failing", move |batch| {
        seen += batch.events.len();
        if seen > 500 {
            return Err("no more".to_owned());
        }
        Ok(batch.events)
    });
    let run = Pipeline::builder("failing")
        .batch_size(10)
        .checkpoint(CheckpointPolicy::at_end_only().and_every_events(50))
        .source("a", ArraySource::from_strings(values.clone()))
        .source("b", ArraySource::from_strings(values))
        .then_from(["a", "b"], failing)
        .then_from(["a"], NativeStep::map("pass", |e| e))
        .to_from("out", ["failing", "pass"], sink)
        .to_from("copy", ["pass"], copy)
        .run();
    let error = tokio::time::timeout(std::time::Duration::from_secs(20), run)
        .await
        .expect("the graph stopped")
        .unwrap_err();
    assert!(
        matches!(&error, PipelineError::Step { .. }),
        "{}",
        crate::ErrorChain(&error)
    );
}

/// A step with several inputs is told which input each batch came from
/// (what a join builds on), in the order of its `from`.
#[tokio::test]
async fn a_step_with_several_inputs_knows_each_batchs_input() {
    use async_trait::async_trait;

    use crate::step::{Step, StepError};
    use crate::Batch;

    /// Tags each event's value with the input index it was given.
    struct Which;

    #[async_trait]
    impl Step for Which {
        fn name(&self) -> &str {
            "which"
        }

        async fn process(&mut self, _: Batch, _: &mut Vec<Batch>) -> Result<(), StepError> {
            Err(StepError::Native {
                step: "which".to_owned(),
                message: "a step with several inputs is given the input".to_owned(),
            })
        }

        async fn process_input(
            &mut self,
            input: usize,
            mut batch: Batch,
            out: &mut Vec<Batch>,
        ) -> Result<(), StepError> {
            for event in &mut batch.events {
                event.value = format!("{input}:{}", value(event)).into_bytes();
            }
            out.push(batch);
            Ok(())
        }
    }

    let (sink, receiver) = channel_sink(1000);
    Pipeline::builder("which")
        .batch_size(3)
        .source("left", ArraySource::from_strings(["l0", "l1", "l2", "l3"]))
        .source("right", ArraySource::from_strings(["r0", "r1"]))
        .then_from(
            ["right", "left"],
            crate::pipeline::StepSpec::Ready(Box::new(Which)),
        )
        .to_from("out", ["which"], sink)
        .run()
        .await
        .unwrap();
    let mut got: Vec<String> = drain(receiver).iter().map(value).collect();
    got.sort();
    assert_eq!(got, ["0:r0", "0:r1", "1:l0", "1:l1", "1:l2", "1:l3"]);
}

/// A diamond (one source through two steps into one) with channels of one
/// batch of one event and a checkpoint every few events: the barriers of
/// both paths align at the join without holding each other up, and every
/// event arrives once through each path.
#[tokio::test]
async fn a_diamond_checkpoints_often_through_tight_channels() {
    let values: Vec<String> = (0..300).map(|n| n.to_string()).collect();
    let (sink, receiver) = channel_sink(10_000);
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        Pipeline::builder("diamond")
            .batch_size(1)
            .channel_capacity(1)
            .checkpoint(CheckpointPolicy::at_end_only().and_every_events(3))
            .source("in", ArraySource::from_strings(values.clone()))
            .then_from(
                ["in"],
                NativeStep::map("left", |mut e: Event| {
                    e.value.insert(0, b'l');
                    e
                }),
            )
            .then_from(
                ["in"],
                NativeStep::map("right", |mut e: Event| {
                    e.value.insert(0, b'r');
                    e
                }),
            )
            .then_from(["left", "right"], NativeStep::map("join", |e| e))
            .to_from("out", ["join"], sink)
            .run(),
    )
    .await
    .expect("the diamond did not stall")
    .unwrap();
    assert!(
        report.checkpoints >= 100,
        "{} checkpoints",
        report.checkpoints
    );
    let mut got: Vec<String> = drain(receiver).iter().map(value).collect();
    got.sort();
    let mut expected: Vec<String> = values
        .iter()
        .flat_map(|v| [format!("l{v}"), format!("r{v}")])
        .collect();
    expected.sort();
    assert_eq!(got, expected);
}
