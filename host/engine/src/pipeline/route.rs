//! The native router of a graph: sends each event to the named outputs
//! whose predicate it matches (`<router>.<route>`), and the events no route
//! matched to its default output, if it has one.

use crate::{Batch, Event};

/// What a route asks of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutePredicate {
    /// The event has the header `name` with exactly this value.
    HeaderEquals {
        /// The header's name.
        name: String,
        /// The value it must have.
        value: String,
    },
    /// The event has the header `name` (whatever its value).
    HeaderPresent {
        /// The header's name.
        name: String,
    },
    /// The event's key is exactly these bytes.
    KeyEquals(Vec<u8>),
    /// The event's key starts with these bytes.
    KeyPrefix(Vec<u8>),
}

impl RoutePredicate {
    /// The event has the header `name` with the value `value`.
    pub fn header_equals(name: impl Into<String>, value: impl Into<String>) -> Self {
        RoutePredicate::HeaderEquals {
            name: name.into(),
            value: value.into(),
        }
    }

    /// Whether `event` matches.
    pub fn matches(&self, event: &Event) -> bool {
        match self {
            RoutePredicate::HeaderEquals { name, value } => event
                .headers
                .iter()
                .any(|(header, got)| header == name && got == value),
            RoutePredicate::HeaderPresent { name } => {
                event.headers.iter().any(|(header, _)| header == name)
            }
            RoutePredicate::KeyEquals(key) => event.key.as_deref() == Some(key.as_slice()),
            RoutePredicate::KeyPrefix(prefix) => event
                .key
                .as_deref()
                .is_some_and(|key| key.starts_with(prefix)),
        }
    }
}

/// A native router step of a graph: its outputs are `<name>.<route>` for
/// each route and `<name>.<default>`; an event goes to every route it
/// matches, or to the default output when it matches none (dropped when
/// the router has no default). It keeps no state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    name: String,
    routes: Vec<(String, RoutePredicate)>,
    default: Option<String>,
}

impl Router {
    /// A router called `name`, with no route yet.
    pub fn new(name: impl Into<String>) -> Self {
        Router {
            name: name.into(),
            routes: Vec::new(),
            default: None,
        }
    }

    /// Adds the output `<router>.<route>`, for the events that match `predicate`.
    #[must_use]
    pub fn route(mut self, route: impl Into<String>, predicate: RoutePredicate) -> Self {
        self.routes.push((route.into(), predicate));
        self
    }

    /// The output `<router>.<route>` for the events no route matches.
    #[must_use]
    pub fn default_route(mut self, route: impl Into<String>) -> Self {
        self.default = Some(route.into());
        self
    }

    /// The router's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its routes' names, in order, then its default route's.
    pub fn route_names(&self) -> Vec<&str> {
        self.routes
            .iter()
            .map(|(route, _)| route.as_str())
            .chain(self.default.as_deref())
            .collect()
    }

    /// Splits `batch` by route: one vector per route of
    /// [`Router::route_names`] (in that order), reusing `out`'s vectors.
    /// An event that several routes match is cloned for all but the last.
    pub(super) fn split(&self, batch: Batch, out: &mut [Vec<Event>]) {
        let routes = self.routes.len();
        let mut matched = Vec::with_capacity(routes);
        for event in batch.events {
            matched.clear();
            matched.extend(
                self.routes
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, predicate))| predicate.matches(&event))
                    .map(|(index, _)| index),
            );
            match matched.split_last() {
                Some((&last, others)) => {
                    for &index in others {
                        if let Some(port) = out.get_mut(index) {
                            port.push(event.clone());
                        }
                    }
                    if let Some(port) = out.get_mut(last) {
                        port.push(event);
                    }
                }
                None if self.default.is_some() => {
                    if let Some(port) = out.get_mut(routes) {
                        port.push(event);
                    }
                }
                // No route and no default: the event goes nowhere.
                None => {}
            }
        }
    }
}
