//! The analyst aggregates (`analytics_revenue`, `analytics_driver_earnings`) add up to
//! the rides they summarise, and keep working after a rebuild switched in new tables.

mod support;

use chrono::{DateTime, TimeDelta, Utc};
use projections::{rebuild, run_batch, RidesProjector};
use rand::rngs::StdRng;
use rand::SeedableRng;
use support::{drive, world, Ending};

type Revenue = (DateTime<Utc>, i64, i64, i64, i64);

async fn revenue(pool: &sqlx::PgPool, bucket: &str) -> Vec<Revenue> {
    let from = Utc::now() - TimeDelta::days(3650);
    let to = Utc::now() + TimeDelta::days(3650);
    sqlx::query_as(
        "SELECT bucket_start, rides, revenue, admin_fees, driver_payouts FROM analytics_revenue($1, $2, $3)",
    )
    .bind(bucket)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
    .expect("analytics_revenue")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revenue_and_earnings_add_up_to_the_completed_rides_and_survive_a_rebuild() {
    let w = world().await;
    let mut rng = StdRng::seed_from_u64(77);
    for i in 0..10 {
        let ending = if i % 3 == 0 {
            Ending::Cancelled
        } else {
            Ending::Completed
        };
        drive(&w, &mut rng, ending).await;
        // Spread the rides over several hours.
        w.clock.advance(TimeDelta::minutes(40));
    }
    while run_batch(&w.pool, &RidesProjector, 100).await.expect("project") > 0 {}

    let (rides, total, fees, payouts): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), sum(adjusted_fare)::int8, sum(admin_fee)::int8, sum(driver_payout)::int8 \
         FROM rides WHERE status = 'COMPLETED'",
    )
    .fetch_one(&w.pool)
    .await
    .expect("rides");
    assert!(rides >= 6);
    let hourly = revenue(&w.pool, "hour").await;
    assert!(hourly.len() >= 3, "several hours: {hourly:?}");
    assert_eq!(hourly.iter().map(|r| r.1).sum::<i64>(), rides);
    assert_eq!(hourly.iter().map(|r| r.2).sum::<i64>(), total);
    assert_eq!(hourly.iter().map(|r| r.3).sum::<i64>(), fees);
    assert!(
        hourly.iter().all(|r| r.2 == r.3 + r.4),
        "revenue = fees + payouts per bucket"
    );
    let daily = revenue(&w.pool, "day").await;
    assert_eq!(daily.iter().map(|r| r.2).sum::<i64>(), total);
    assert!(daily.len() <= hourly.len());

    let earnings: Vec<(uuid::Uuid, i64, i64, i64)> = sqlx::query_as(
        "SELECT driver_id, rides, admin_fees, earnings FROM analytics_driver_earnings($1, $2)",
    )
    .bind(Utc::now() - TimeDelta::days(3650))
    .bind(Utc::now() + TimeDelta::days(3650))
    .fetch_all(&w.pool)
    .await
    .expect("analytics_driver_earnings");
    assert_eq!(earnings.iter().map(|e| e.3).sum::<i64>(), payouts);
    assert!(earnings.windows(2).all(|p| p[0].3 >= p[1].3), "highest first");

    // After the tables were switched, the functions read the new ones.
    rebuild(&w.pool, &RidesProjector).await.expect("rebuild");
    assert_eq!(revenue(&w.pool, "hour").await, hourly);
    let index: Option<String> =
        sqlx::query_scalar("SELECT indexname::text FROM pg_indexes WHERE indexname = 'rides_completed_at'")
            .fetch_optional(&w.pool)
            .await
            .expect("pg_indexes");
    assert_eq!(
        index.as_deref(),
        Some("rides_completed_at"),
        "index names survive the switch"
    );
}
