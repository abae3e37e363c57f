//! Dataflow graphs: what the builder collects for one (named sources,
//! steps and routers that name their inputs, named sinks) and its check:
//! every name known, no cycle, every output read. `graph_run.rs` runs it.

use std::collections::{BTreeMap, HashMap};

use super::instantiate::StepSpec;
use super::route::Router;
use crate::streams::{Sink, Source};

/// The header a step with several inputs finds on each event: the name of
/// the input (a source, a step, `<router>.<route>`) it came from.
pub const INPUT_HEADER: &str = "plumber-input";

/// A step of a graph before the pipeline starts.
pub(super) enum NodeSpec {
    /// A step (pipe, window, command) with one output.
    Step(StepSpec),
    /// A native router, one output per route.
    Route(Router),
}

impl NodeSpec {
    /// The step's name.
    pub(super) fn name(&self) -> &str {
        match self {
            NodeSpec::Step(spec) => spec.name(),
            NodeSpec::Route(router) => router.name(),
        }
    }

    /// A router's route names (`None` for a step with one output).
    pub(super) fn routes(&self) -> Option<Vec<&str>> {
        match self {
            NodeSpec::Step(_) => None,
            NodeSpec::Route(router) => Some(router.route_names()),
        }
    }
}

/// A step of a graph and the outputs it reads.
pub(super) struct GraphNode {
    pub(super) inputs: Vec<String>,
    pub(super) spec: NodeSpec,
}

/// A sink of a graph and the outputs it reads.
pub(super) struct GraphSink {
    pub(super) name: String,
    pub(super) inputs: Vec<String>,
    pub(super) sink: Box<dyn Sink>,
}

/// What the builder collects for a graph.
#[derive(Default)]
pub(super) struct GraphParts {
    pub(super) sources: Vec<(String, Box<dyn Source>)>,
    pub(super) nodes: Vec<GraphNode>,
    pub(super) sinks: Vec<GraphSink>,
}

impl GraphParts {
    /// Whether anything of a graph was added.
    pub(super) fn is_empty(&self) -> bool {
        self.sources.is_empty() && self.nodes.is_empty() && self.sinks.is_empty()
    }

    /// The graph by its names.
    pub(super) fn shape(&self) -> GraphShape<'_> {
        GraphShape {
            sources: self.sources.iter().map(|(name, _)| name.as_str()).collect(),
            nodes: self
                .nodes
                .iter()
                .map(|node| GraphStepShape {
                    name: node.spec.name(),
                    inputs: &node.inputs,
                    routes: node.spec.routes(),
                })
                .collect(),
            sinks: self
                .sinks
                .iter()
                .map(|sink| (sink.name.as_str(), sink.inputs.as_slice()))
                .collect(),
        }
    }
}

/// A graph by its names only: what [`GraphShape::check`] reads (the config
/// checks its graph with it too).
#[derive(Debug)]
pub struct GraphShape<'a> {
    /// The sources' names.
    pub sources: Vec<&'a str>,
    /// The steps.
    pub nodes: Vec<GraphStepShape<'a>>,
    /// The sinks' names and the outputs each reads.
    pub sinks: Vec<(&'a str, &'a [String])>,
}

/// A step of a [`GraphShape`].
#[derive(Debug)]
pub struct GraphStepShape<'a> {
    /// The step's name.
    pub name: &'a str,
    /// The outputs it reads.
    pub inputs: &'a [String],
    /// A router's routes (its outputs are `<name>.<route>`); `None`: the
    /// step has one output, named by its name.
    pub routes: Option<Vec<&'a str>>,
}

/// Where in a graph a [`GraphError`] is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GraphPlace {
    /// The graph has no source.
    Sources,
    /// The graph has no sink.
    Sinks,
    /// The source of this index.
    Source(usize),
    /// The step of this index (its name).
    Node(usize),
    /// The input list of the step of this index.
    NodeFrom(usize),
    /// One input of a step: (step, input).
    NodeInput(usize, usize),
    /// One route of a router: (step, route; the default route last).
    NodeRoute(usize, usize),
    /// The input list of the sink of this index.
    SinkFrom(usize),
    /// One input of a sink: (sink, input).
    SinkInput(usize, usize),
}

/// Why a graph cannot run, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct GraphError {
    /// Where.
    pub place: GraphPlace,
    /// What is wrong.
    pub message: String,
}

/// Who reads an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reader {
    /// Input `input` of step `node`.
    Node { node: usize, input: usize },
    /// Input `input` of sink `sink`.
    Sink { sink: usize, input: usize },
}

/// Who makes an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Producer {
    Source(usize),
    Node(usize),
    Route(usize, usize),
}

/// A checked graph: who reads each output, by its name.
#[derive(Debug)]
pub(super) struct Wiring {
    pub(super) readers: HashMap<String, Vec<Reader>>,
}

impl GraphShape<'_> {
    /// Checks the graph: at least one source and one sink, unique names,
    /// every input a known output, no cycle, every output read by some
    /// step or sink.
    ///
    /// # Errors
    ///
    /// The first fault found, with where it is.
    pub fn check(&self) -> Result<(), GraphError> {
        self.wiring().map(drop)
    }

    pub(super) fn wiring(&self) -> Result<Wiring, GraphError> {
        let fault = |place: GraphPlace, message: String| GraphError { place, message };
        if self.sources.is_empty() {
            return Err(fault(
                GraphPlace::Sources,
                "a graph needs at least one source".into(),
            ));
        }
        if self.sinks.is_empty() {
            return Err(fault(
                GraphPlace::Sinks,
                "a graph needs at least one sink".into(),
            ));
        }
        let mut outputs: BTreeMap<String, Producer> = BTreeMap::new();
        for (index, name) in self.sources.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(fault(
                    GraphPlace::Source(index),
                    "expected a non-empty source name".into(),
                ));
            }
            outputs.insert((*name).to_owned(), Producer::Source(index));
        }
        for (index, node) in self.nodes.iter().enumerate() {
            let named: Vec<(String, Producer, GraphPlace)> = match &node.routes {
                None => vec![(
                    node.name.to_owned(),
                    Producer::Node(index),
                    GraphPlace::Node(index),
                )],
                Some(routes) => routes
                    .iter()
                    .enumerate()
                    .map(|(route, name)| {
                        (
                            format!("{}.{name}", node.name),
                            Producer::Route(index, route),
                            GraphPlace::NodeRoute(index, route),
                        )
                    })
                    .collect(),
            };
            if node.routes.as_ref().is_some_and(Vec::is_empty) {
                return Err(fault(
                    GraphPlace::Node(index),
                    format!("router `{}` has no route", node.name),
                ));
            }
            for (name, producer, place) in named {
                if let Some(other) = outputs.insert(name.clone(), producer) {
                    let what = match other {
                        Producer::Source(_) => "a source",
                        Producer::Node(_) => "a step",
                        Producer::Route(..) => "a router's route",
                    };
                    return Err(fault(
                        place,
                        format!(
                            "`{name}` is also the name of {what}: sources, steps and routes \
                             share one set of output names"
                        ),
                    ));
                }
            }
        }
        let unknown = |input: &str| {
            let known: Vec<String> = outputs.keys().map(|name| format!("`{name}`")).collect();
            let router = self
                .nodes
                .iter()
                .find(|node| node.routes.is_some() && node.name == input)
                .map(|_| format!(" (`{input}` is a router: read its routes, `{input}.<route>`)"))
                .unwrap_or_default();
            format!(
                "unknown input `{input}`{router}; known: {}",
                known.join(", ")
            )
        };
        let mut readers: HashMap<String, Vec<Reader>> = HashMap::new();
        let mut read_inputs = |inputs: &[String],
                               from: GraphPlace,
                               at: &dyn Fn(usize) -> GraphPlace,
                               reader: &dyn Fn(usize) -> Reader|
         -> Result<(), GraphError> {
            if inputs.is_empty() {
                return Err(fault(from, "expected at least one input to read".into()));
            }
            for (position, input) in inputs.iter().enumerate() {
                if !outputs.contains_key(input) {
                    return Err(fault(at(position), unknown(input)));
                }
                if inputs[..position].contains(input) {
                    return Err(fault(
                        at(position),
                        format!("input `{input}` is named twice"),
                    ));
                }
                readers
                    .entry(input.clone())
                    .or_default()
                    .push(reader(position));
            }
            Ok(())
        };
        for (node, shape) in self.nodes.iter().enumerate() {
            read_inputs(
                shape.inputs,
                GraphPlace::NodeFrom(node),
                &|input| GraphPlace::NodeInput(node, input),
                &|input| Reader::Node { node, input },
            )?;
        }
        for (sink, (_, inputs)) in self.sinks.iter().enumerate() {
            read_inputs(
                inputs,
                GraphPlace::SinkFrom(sink),
                &|input| GraphPlace::SinkInput(sink, input),
                &|input| Reader::Sink { sink, input },
            )?;
        }
        self.check_acyclic(&outputs)?;
        for (name, producer) in &outputs {
            if readers.contains_key(name) {
                continue;
            }
            let (place, what) = match *producer {
                Producer::Source(index) => (GraphPlace::Source(index), format!("source `{name}`")),
                Producer::Node(index) => {
                    (GraphPlace::Node(index), format!("the output of `{name}`"))
                }
                Producer::Route(index, route) => (
                    GraphPlace::NodeRoute(index, route),
                    format!("route `{name}`"),
                ),
            };
            return Err(fault(
                place,
                format!("{what} is read by no step or sink: name it in a `from`, or remove it"),
            ));
        }
        Ok(Wiring { readers })
    }

    /// Refuses a cycle among the steps, naming it.
    fn check_acyclic(&self, outputs: &BTreeMap<String, Producer>) -> Result<(), GraphError> {
        // The steps each step reads from (sources start no cycle).
        let upstream: Vec<Vec<(usize, usize)>> = self
            .nodes
            .iter()
            .map(|node| {
                node.inputs
                    .iter()
                    .enumerate()
                    .filter_map(|(position, input)| match outputs.get(input) {
                        Some(Producer::Node(from) | Producer::Route(from, _)) => {
                            Some((position, *from))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .collect();
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Open,
            Done,
        }
        let mut marks = vec![Mark::New; self.nodes.len()];
        for start in 0..self.nodes.len() {
            if marks[start] != Mark::New {
                continue;
            }
            // Depth first, with an explicit stack of (node, next edge).
            let mut stack = vec![(start, 0usize)];
            marks[start] = Mark::Open;
            while let Some(&mut (node, ref mut edge)) = stack.last_mut() {
                let Some(&(position, from)) = upstream[node].get(*edge) else {
                    marks[node] = Mark::Done;
                    stack.pop();
                    continue;
                };
                *edge += 1;
                match marks[from] {
                    Mark::Done => {}
                    Mark::New => {
                        marks[from] = Mark::Open;
                        stack.push((from, 0));
                    }
                    Mark::Open => {
                        // `from` is on the stack: the cycle is from there to here.
                        let at = stack.iter().position(|&(n, _)| n == from).unwrap_or(0);
                        let mut names: Vec<&str> = stack[at..]
                            .iter()
                            .map(|&(n, _)| self.nodes[n].name)
                            .collect();
                        names.reverse();
                        names.push(self.nodes[node].name);
                        let path: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
                        return Err(GraphError {
                            place: GraphPlace::NodeInput(node, position),
                            message: format!(
                                "a cycle: {} (each reads the one before); a graph has no cycles",
                                path.join(" → ")
                            ),
                        });
                    }
                }
            }
        }
        Ok(())
    }
}
