//! The demo's sample traffic: orders that are created, paid, shipped and deleted, one
//! statement every [`STEP`], each its own transaction.

use std::time::Duration;

use tokio_postgres::Client;

/// The time between two statements (three to four changes a second).
pub const STEP: Duration = Duration::from_millis(300);

/// The sample table; `REPLICA IDENTITY FULL` so updates carry the old row and `changed`.
pub const SCHEMA: &str = "\
CREATE TABLE public.orders (
    id bigserial PRIMARY KEY,
    customer text NOT NULL,
    status text NOT NULL DEFAULT 'new',
    amount numeric(10, 2) NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE public.orders REPLICA IDENTITY FULL;";

const CUSTOMERS: [&str; 6] = ["ada", "grace", "linus", "barbara", "ken", "margaret"];

/// One step of an order's life, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Create,
    Pay,
    Ship,
    Delete,
}

impl Step {
    /// The statement; each touches at most one row (the oldest order in the right state).
    fn sql(self) -> &'static str {
        match self {
            Step::Create => {
                "INSERT INTO public.orders (customer, amount) VALUES ($1, $2::text::numeric)"
            }
            Step::Pay => {
                "UPDATE public.orders SET status = 'paid', updated_at = now() \
                 WHERE id = (SELECT min(id) FROM public.orders WHERE status = 'new')"
            }
            Step::Ship => {
                "UPDATE public.orders SET status = 'shipped', updated_at = now() \
                 WHERE id = (SELECT min(id) FROM public.orders WHERE status = 'paid')"
            }
            Step::Delete => {
                "DELETE FROM public.orders \
                 WHERE id = (SELECT min(id) FROM public.orders WHERE status = 'shipped')"
            }
        }
    }
}

/// Two orders at a time, so creates, updates and deletes of different rows interleave; every
/// statement changes exactly one row.
const PATTERN: [Step; 8] = [
    Step::Create,
    Step::Create,
    Step::Pay,
    Step::Ship,
    Step::Pay,
    Step::Delete,
    Step::Ship,
    Step::Delete,
];

/// Writes until the connection fails (the caller stops it by dropping the future).
pub async fn write(client: &Client) -> Result<(), tokio_postgres::Error> {
    let mut tick = tokio::time::interval(STEP);
    for step in PATTERN.iter().cycle() {
        tick.tick().await;
        let changed = if *step == Step::Create {
            let customer = CUSTOMERS[fastrand::usize(..CUSTOMERS.len())];
            let amount = format!("{}.{:02}", fastrand::u32(5..200), fastrand::u32(..100));
            client.execute(step.sql(), &[&customer, &amount]).await?
        } else {
            client.execute(step.sql(), &[]).await?
        };
        if changed != 1 {
            tracing::debug!(
                ?step,
                changed,
                "demo statement changed an unexpected number of rows"
            );
        }
    }
    Ok(())
}
