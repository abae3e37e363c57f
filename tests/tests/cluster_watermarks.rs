//! Event-time windows after a `repartition` step: the stage-2 windows'
//! watermark is the minimum over the upstream (stage-1) partitions'
//! watermarks, an upstream silent for the step's `idle_timeout_ms` left
//! out. Real servers: a 3-node NATS JetStream cluster on loopback and
//! Redis; workers as `plumber worker` processes; the `window-count` guest.
//!
//! Each run publishes events whose windows (one second, per key) the test
//! computes itself, then end markers far on in event time from every
//! upstream partition (see [`end_markers`]), and checks that the windows
//! in the output are exactly the reference: every window of every key
//! once, each with all its events (none dropped as late).

use plumber_tests as harness;

use harness::cluster::*;

/// Half the upstream partitions run 10 s behind the others in event time
/// (their events carry older timestamps), far more than the windows'
/// `max_out_of_orderness_ms` (500). A stage-2 window that took its
/// watermark from the timestamps it sees would run 10 s ahead of the
/// lagging partitions and drop their events as late; with the minimum
/// over the upstream partitions every event is counted in its window.
#[tokio::test]
async fn windows_after_a_shuffle_wait_for_the_slowest_upstream_partition() {
    const PARTITIONS: u32 = 4;
    let setup = windowed_setup(PARTITIONS, None).await;
    let all: Vec<u32> = (0..PARTITIONS).collect();
    let events = timed_events(0..3_000, PARTITIONS, &[1, 3], 10_000);
    let markers = end_markers(&all, PARTITIONS);
    let expected = window_counts(&events);
    // A backlog: the stage-1 tasks read it as fast as they can, the
    // lagging partitions' old timestamps among the others'.
    publish_timed(&setup.context, &events, 500, std::time::Duration::ZERO).await;
    publish_timed(&setup.context, &markers, 500, std::time::Duration::ZERO).await;
    let started = std::time::Instant::now();
    let workers: Vec<WorkerProcess> = ["w1", "w2"]
        .iter()
        .map(|id| WorkerProcess::start(&setup.path, id, setup.dir.path()))
        .collect();
    let released = wait_for_settled_output(
        &setup.context,
        expected.len() as u64,
        std::time::Duration::from_secs(180),
    )
    .await;
    eprintln!(
        "{} events (half of the upstream partitions 10 s behind) in {} windows: {released} \
         released {:.1} s after the workers started",
        events.len(),
        expected.len(),
        started.elapsed().as_secs_f64()
    );
    assert_window_counts(&setup.context, &expected, || logs_of(&workers)).await;
    // The watermark messages crossed the shuffle but were never events:
    // the window counted exactly the events (checked above), and the
    // shuffle stream holds one watermark message per upstream flush and
    // downstream partition besides them.
    let shuffled = read_stream_messages_patiently(&setup.context, "SHUF").await;
    let carried = shuffled
        .iter()
        .filter(|m| m.id.as_deref().is_some_and(|id| id.contains(":wm:")))
        .count();
    assert_eq!(
        shuffled.len() - carried,
        events.len() + markers.len(),
        "events in the shuffle stream"
    );
    assert!(
        carried >= (PARTITIONS * PARTITIONS) as usize,
        "{carried} watermark messages"
    );
    let _ = (&setup.cluster, &setup.redis);
}

/// One upstream partition receives no event after the first half of the
/// run (nor an end marker), while the others go on for several seconds:
/// it sends no more watermark messages, and after the step's
/// `idle_timeout_ms` (3 s here) the stage-2 partitions leave it out of the
/// minimum, so their windows close past its last watermark on the others'
/// watermarks alone — before any end marker is published. Every window
/// has all its events.
#[tokio::test]
async fn an_idle_upstream_partition_is_left_out_after_the_idle_timeout() {
    const PARTITIONS: u32 = 4;
    const IDLE: u32 = 2;
    let setup = windowed_setup(PARTITIONS, Some(3_000)).await;
    let first = timed_events(0..1_500, PARTITIONS, &[], 0);
    let idle_inputs = input_keys_by_partition(PARTITIONS)[IDLE as usize].clone();
    let second: Vec<TimedEvent> = timed_events(1_500..3_000, PARTITIONS, &[], 0)
        .into_iter()
        .filter(|event| !idle_inputs.contains(&event.input_key))
        .collect();
    let idle_last = first
        .iter()
        .filter(|event| idle_inputs.contains(&event.input_key))
        .map(|event| event.timestamp)
        .max()
        .unwrap();
    let busy: Vec<u32> = (0..PARTITIONS).filter(|p| *p != IDLE).collect();
    let markers = end_markers(&busy, PARTITIONS);
    let mut events = first.clone();
    events.extend(second.iter().cloned());
    let expected = window_counts(&events);
    let workers: Vec<WorkerProcess> = ["w1", "w2"]
        .iter()
        .map(|id| WorkerProcess::start(&setup.path, id, setup.dir.path()))
        .collect();
    publish_timed(
        &setup.context,
        &first,
        250,
        std::time::Duration::from_millis(100),
    )
    .await;
    // The idle partition's last watermark crossed the shuffle: from now on
    // it is silent, and only the others go on.
    let idle_task = setup.pipeline.names.task(IDLE);
    let idle_mark = format!("{idle_task}:wm:0:{idle_last}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while !read_stream_messages_patiently(&setup.context, "SHUF")
        .await
        .iter()
        .any(|m| m.id.as_deref() == Some(idle_mark.as_str()))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no watermark message {idle_mark} within 180 s:\n{}",
            logs_of(&workers)
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let idle_from = std::time::Instant::now();
    // The others for about 6 s (twice the idle timeout).
    publish_timed(
        &setup.context,
        &second,
        100,
        std::time::Duration::from_millis(500),
    )
    .await;
    // Windows past the idle partition's last watermark close on the
    // others' alone, with no end marker yet.
    let past_idle = (idle_last - idle_last % 1000) + 2_000;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let released = output_window_counts(&setup.context).await;
        if released.keys().any(|(start, _)| *start >= past_idle) {
            eprintln!(
                "upstream partition {IDLE} silent since its watermark {idle_last}: windows from \
                 {past_idle} on released {:.1} s after its silence began (idle timeout 3 s), \
                 {} windows so far, no end marker published",
                idle_from.elapsed().as_secs_f64(),
                released.len()
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no window past the idle partition's last watermark ({idle_last}) in 180 s:\n{}",
            logs_of(&workers)
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    publish_timed(&setup.context, &markers, 500, std::time::Duration::ZERO).await;
    let released = wait_for_settled_output(
        &setup.context,
        expected.len() as u64,
        std::time::Duration::from_secs(180),
    )
    .await;
    eprintln!(
        "{} events, upstream partition {IDLE} idle for the second half: {released} of {} windows",
        events.len(),
        expected.len(),
    );
    assert_window_counts(&setup.context, &expected, || logs_of(&workers)).await;
    let _ = (&setup.cluster, &setup.redis);
}

/// Three workers; while events flow (half the upstream partitions 10 s
/// behind in event time), the worker holding the most stage-2 tasks is
/// killed (SIGKILL) with windows open in them. Its tasks are taken over
/// from their checkpoints (window buffers and the window's watermark
/// included); the new owners rebuild the upstreams' watermarks from fresh
/// watermark messages before any window fires, and replayed output has the
/// same message ids. The windows are exactly the reference, and no task
/// had two owners at once.
#[tokio::test]
async fn a_killed_stage_2_worker_leaves_the_windows_exact() {
    const PARTITIONS: u32 = 4;
    let tasks = PARTITIONS * 2;
    let setup = windowed_setup(PARTITIONS, None).await;
    let all: Vec<u32> = (0..PARTITIONS).collect();
    let events = timed_events(0..4_000, PARTITIONS, &[1, 3], 10_000);
    let markers = end_markers(&all, PARTITIONS);
    let expected = window_counts(&events);
    let workers = start_three_workers(&setup);
    let publisher = {
        let (context, events) = (setup.context.clone(), events.clone());
        tokio::spawn(async move {
            publish_timed(
                &context,
                &events,
                100,
                std::time::Duration::from_millis(100),
            )
            .await;
        })
    };
    // Mid-stream: a sixth of the windows released.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while stream_messages_patiently(&setup.context, "OUT").await < expected.len() as u64 / 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "a sixth of the windows were not released in 300 s:\n{}",
            logs_of(&workers)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (victim, orphans, stage_2) = stage_2_victim(&workers, PARTITIONS);
    let victim_id = workers[victim].id.clone();
    let fences = commit_fences(&setup.pipeline, &stage_2).await;
    let released_before = stream_messages_patiently(&setup.context, "OUT").await;
    let killed_us = now_us();
    workers[victim].signal(libc::SIGKILL);
    assert!(
        !publisher.is_finished(),
        "every event was published before the kill: the test would not kill mid-stream"
    );
    publisher.await.unwrap();
    publish_timed(&setup.context, &markers, 500, std::time::Duration::ZERO).await;
    let released = wait_for_settled_output(
        &setup.context,
        expected.len() as u64,
        std::time::Duration::from_secs(300),
    )
    .await;
    let changes: Vec<Ownership> = workers
        .iter()
        .flat_map(|w| ownership_changes(&w.log_text()))
        .collect();
    let mut worst = std::time::Duration::ZERO;
    for task in &orphans {
        let taken = first_start_after(&changes, *task, &victim_id, killed_us)
            .unwrap_or_else(|| panic!("task {task} of {victim_id} was never taken over"));
        worst = worst.max(std::time::Duration::from_micros(taken - killed_us));
    }
    let intervals =
        assert_one_owner_at_a_time_killed(&changes, tasks, &[(victim_id.as_str(), killed_us)]);
    eprintln!(
        "SIGKILL of {victim_id} ({} tasks, stage 2: {stage_2:?}) with {released_before} of {} \
         windows released: all owned again {worst:?} after the kill; {released} windows in the \
         end; {intervals} ownership intervals",
        orphans.len(),
        expected.len()
    );
    assert_window_counts(&setup.context, &expected, || logs_of(&workers)).await;
    // The killed stage-2 tasks committed again under their new owners.
    let committed = commit_fences(&setup.pipeline, &stage_2).await;
    for (task, fence) in &committed {
        assert!(
            *fence > fences[task],
            "stage-2 task {task} never committed under its new owner"
        );
    }
    let _ = (&setup.cluster, &setup.redis);
}
