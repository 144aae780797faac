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

/// A lane's next group, as [`Transport::next_group`] picks it.
#[derive(Debug, PartialEq, Eq)]
pub enum Group {
    /// The first n jobs.
    Front(usize),
    /// The jobs at these ascending positions.
    At(Vec<usize>),
}

impl Group {
    /// How many jobs it holds.
    pub fn len(&self) -> usize {
        match self {
            Group::Front(n) => *n,
            Group::At(picks) => picks.len(),
        }
    }
}

/// Whether no request can be made for `j` (a template or `body` failed for it).
fn unsendable(j: &Job) -> bool {
    j.shape.as_deref().is_some_and(|s| s.unsendable.is_some())
}

/// The JetStream rule of [`Transport::next_group`]: the positions of the first job of each
/// ordering key, up to `batch`; an unsendable first job goes alone, a later one is passed
/// over with every later job of its key.
fn first_per_key<'a>(jobs: impl Iterator<Item = &'a Job>, batch: usize) -> Vec<usize> {
    let mut seen = std::collections::HashSet::new();
    let mut picks = Vec::new();
    for (i, j) in jobs.enumerate() {
        if picks.len() >= batch {
            break;
        }
        if !seen.insert(j.order_key) {
            continue;
        }
        if unsendable(j) {
            if picks.is_empty() {
                picks.push(i);
                break;
            }
            continue;
        }
        picks.push(i);
    }
    picks
}

impl Transport {
    /// Whether `next` may join `group` (its jobs so far, in order; at most `batch`): an
    /// HTTP request holds jobs of one shape, a JetStream group at most one job per ordering
    /// key, and an unsendable job is always alone. The first job always starts a group.
    pub fn fits(&self, group: &[&Job], next: &Job, batch: usize) -> bool {
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

    /// Whether a group is one request, so a fuller group saves requests (HTTP). A JetStream
    /// group is pipelined publishes, one per event: waiting for more saves nothing.
    pub fn fills_requests(&self) -> bool {
        matches!(self, Transport::Http(_))
    }

    /// Which of `jobs` (a lane's queue, in order) make its next group.
    ///
    /// - HTTP: the longest run from the start that [`Transport::fits`] (one request shape).
    /// - JetStream: the first job of each ordering key, up to `batch`, wherever it stands in
    ///   the queue. A key's later jobs wait for the next group, and a key whose first job is
    ///   passed over (unsendable) is passed over entirely, so each key's jobs still go in
    ///   order, one per group. A queue of a row's insert then update, row after row, thus
    ///   still fills a group (the inserts; then the updates).
    ///
    /// An unsendable job at the front goes alone.
    pub fn next_group<'a>(&self, jobs: impl Iterator<Item = &'a Job>, batch: usize) -> Group {
        match self {
            Transport::Http(_) => {
                let mut group: Vec<&Job> = Vec::new();
                for j in jobs {
                    if !self.fits(&group, j, batch) {
                        break;
                    }
                    group.push(j);
                }
                Group::Front(group.len())
            }
            Transport::Nats(_) => Group::At(first_per_key(jobs, batch)),
        }
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn job(key: u64, unsendable: bool) -> Job {
        Job {
            id: format!("e{key}"),
            body: Bytes::new(),
            order_key: key,
            txn: super::super::Ack { session: 0, txn: 0 },
            shape: unsendable.then(|| {
                Box::new(Shape {
                    unsendable: Some("x".into()),
                    ..Shape::default()
                })
            }),
        }
    }

    #[test]
    fn a_jetstream_group_takes_the_first_job_of_each_key() {
        // A row's insert then its update, row after row.
        let q: Vec<Job> = [1, 1, 2, 2, 3, 3].iter().map(|&k| job(k, false)).collect();
        assert_eq!(first_per_key(q.iter(), 100), vec![0, 2, 4]);
        assert_eq!(first_per_key(q.iter(), 2), vec![0, 2]);
        // An unsendable job in front goes alone; a later one is passed over with its key.
        let q = [job(1, true), job(2, false)];
        assert_eq!(first_per_key(q.iter(), 100), vec![0]);
        let q = [job(1, false), job(2, true), job(2, false), job(3, false)];
        assert_eq!(first_per_key(q.iter(), 100), vec![0, 3]);
    }
}
