#!/usr/bin/env bash
# Runs an example pipeline end to end on the embedded defaults (no server):
#   examples/run.sh            the seed's names example from examples/names.json
#   examples/run.sh wordcount  word count over examples/data/words.txt, sled state
#   examples/run.sh windowed   per-word counts per 10-second event-time window over timestamped events
#   examples/run.sh graph      a graph: two bid files, a router, the big bids upper-cased to one sink, all to another
#   examples/run.sh join       a join in a graph: bids and auctions joined per auction and 10-second window, counted, and the bids archived
#   examples/run.sh library    the names example through the Rust builder API
set -euo pipefail
cd "$(dirname "$0")/.."
example="${1:-names}"

rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build --quiet --release --target wasm32-wasip2 --manifest-path examples/guests/Cargo.toml

case "$example" in
  names)
    # A fresh state directory, so the counts start at 1 (a second run on the
    # same directory resumes after the last event and prints nothing).
    rm -rf target/example-state/names
    cargo run --quiet -p plumber-cli -- run examples/names.json
    ;;
  wordcount)
    rm -rf target/example-state/wordcount target/example-state/wordcount.out
    cargo run --quiet -p plumber-cli -- run examples/wordcount.json
    echo "--- running counts written to target/example-state/wordcount.out (last 5 lines):"
    tail -n 5 target/example-state/wordcount.out
    echo "--- final counts in the sled state (top 5):"
    cargo run --quiet -p plumber-cli -- state examples/wordcount.json --pipe count | sort -t$'\t' -k2,2nr | head -n 5
    ;;
  windowed)
    rm -rf target/example-state/windowed-wordcount target/example-state/windowed-wordcount.out target/example-state/windowed-wordcount.late
    cargo run --quiet -p plumber-cli -- run examples/windowed-wordcount.json
    echo "--- per-word counts per 10-second event-time window (first 12 lines of target/example-state/windowed-wordcount.out):"
    head -n 12 target/example-state/windowed-wordcount.out
    ;;
  graph)
    rm -rf target/example-state/graph target/example-state/graph-alerts.out target/example-state/graph-archive.out
    cargo run --quiet -p plumber-cli -- run examples/graph.json
    echo "--- big bids of both sources, upper-cased (target/example-state/graph-alerts.out):"
    cat target/example-state/graph-alerts.out
    echo "--- every bid of both sources: $(wc -l < target/example-state/graph-archive.out) lines in target/example-state/graph-archive.out"
    ;;
  join)
    rm -rf target/example-state/join target/example-state/join-pairs.out target/example-state/join-archive.out
    cargo run --quiet -p plumber-cli -- run examples/join.json
    echo "--- the bids and auctions of each auction's 10-second windows that have both (target/example-state/join-pairs.out):"
    cat target/example-state/join-pairs.out
    echo "--- every bid: $(wc -l < target/example-state/join-archive.out) lines in target/example-state/join-archive.out"
    ;;
  library)
    cargo run --quiet -p plumber-examples --bin names
    ;;
  *)
    echo "unknown example '$example' (names, wordcount, windowed, graph, join, library)" >&2
    exit 2
    ;;
esac
