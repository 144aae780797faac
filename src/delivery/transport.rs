//! What a lane sends its jobs over: HTTP (one request per group, a batch body when
//! `batch > 1`) or JetStream (one message per job, published pipelined). The lane's retry,
//! park and dead rules are the same for both.

use bytes::Bytes;

use super::batch;
use super::client::{Attempt, Client};
use super::connection::Connection;
use super::nats::Publisher;
use super::{Job, Shape};

/// A trigger's way of sending.
#[derive(Debug)]
pub enum Transport {
    /// Webhooks.
    Http(Client),
    /// JetStream publishes.
    Nats(Publisher),
}

/// One group of jobs, ready to be sent (again on every retry).
#[derive(Debug)]
pub enum Prepared {
    /// One HTTP request.
    Http {
        /// Its `webhook-id`.
        id: String,
        /// Its body.
        body: Bytes,
        /// Its shape (the group's, shared by every member).
        shape: Option<Box<Shape>>,
    },
    /// One JetStream message per job.
    Nats(Vec<(String, Bytes, Option<Box<Shape>>)>),
}

impl Prepared {
    /// The id logs name the group by: the request's `webhook-id`, or the first event's.
    pub fn id(&self) -> &str {
        match self {
            Prepared::Http { id, .. } => id,
            Prepared::Nats(msgs) => msgs.first().map_or("", |m| m.0.as_str()),
        }
    }
}

impl Transport {
    /// Whether `next` may join `group` (its jobs so far, in order; at most `batch`): an
    /// HTTP request holds jobs of one shape, a JetStream group at most one job per ordering
    /// key, and an unsendable job is always alone. The first job always starts a group.
    pub fn fits(&self, group: &[&Job], next: &Job, batch: usize) -> bool {
        let unsendable = |j: &Job| j.shape.as_deref().is_some_and(|s| s.unsendable.is_some());
        let Some(first) = group.first() else {
            return true;
        };
        if group.len() >= batch || unsendable(first) || unsendable(next) {
            return false;
        }
        match self {
            Transport::Http(_) => next.shape == first.shape,
            Transport::Nats(_) => group.iter().all(|j| j.order_key != next.order_key),
        }
    }

    /// How many of `jobs` (in order) go in the next group (see [`Transport::fits`]).
    pub fn group_len<'a>(&self, jobs: impl Iterator<Item = &'a Job>, batch: usize) -> usize {
        let mut group: Vec<&Job> = Vec::new();
        for j in jobs {
            if !self.fits(&group, j, batch) {
                break;
            }
            group.push(j);
        }
        group.len()
    }

    /// The group's request(s).
    pub fn prepare<'a, I>(&self, jobs: I, batch: usize) -> Prepared
    where
        I: Iterator<Item = &'a Job> + Clone,
    {
        match self {
            Transport::Http(_) => {
                let shape = jobs.clone().next().and_then(|j| j.shape.clone());
                let (id, body) = batch::request(jobs, batch);
                Prepared::Http { id, body, shape }
            }
            Transport::Nats(_) => Prepared::Nats(
                jobs.map(|j| (j.id.clone(), j.body.clone(), j.shape.clone()))
                    .collect(),
            ),
        }
    }

    /// One attempt at sending `p`.
    pub async fn send(&self, conn: &mut Connection, p: &Prepared) -> Attempt {
        match (self, p) {
            (Transport::Http(client), Prepared::Http { id, body, shape }) => {
                client.send(conn, id, body.clone(), shape.as_deref()).await
            }
            (Transport::Nats(publisher), Prepared::Nats(msgs)) => {
                let jobs: Vec<(&str, &Bytes, Option<&Shape>)> = msgs
                    .iter()
                    .map(|(id, body, shape)| (id.as_str(), body, shape.as_deref()))
                    .collect();
                publisher.publish(&jobs).await
            }
            // A group is prepared by the transport that sends it.
            (_, p) => {
                let error =
                    super::connection::HttpError::Request("a group prepared for another transport");
                let _ = p;
                Attempt {
                    verdict: super::outcome::classify_error(&error),
                    status: None,
                    retry_after: None,
                    error: Some(error),
                }
            }
        }
    }

    /// Whether the group's first job cannot be sent at all (it says nothing of the target).
    pub fn unsendable(p: &Prepared) -> bool {
        match p {
            Prepared::Http { shape, .. } => {
                shape.as_deref().is_some_and(|s| s.unsendable.is_some())
            }
            Prepared::Nats(msgs) => msgs
                .iter()
                .any(|(_, _, s)| s.as_deref().is_some_and(|s| s.unsendable.is_some())),
        }
    }
}
