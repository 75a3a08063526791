//! The batch layer over a lake on S3 (the S3-compatible store `deploy/dev` runs): a lake
//! the real writer wrote to a directory, copied object for object under a prefix of the
//! test's own, gives exactly the tables the directory gives, and those are the
//! brute-force model's.

mod common;

use common::*;
use fraud_lake::{Lake, LakeRoot};
use futures::TryStreamExt;
use object_store::{ObjectStoreExt, PutPayload};

#[tokio::test]
async fn a_lake_on_s3_gives_the_same_tables_as_the_same_lake_in_a_directory() {
    let mut rng = Rng::from_env("s3");
    let now = now_ms();
    let watermark = hour_floor(now) - HOUR;
    let mut test = BatchTest::create("batch-s3", 3).await;

    // Two days of events up to a minute ago, some published twice.
    let mut events = Vec::new();
    for number in 0..3_000 {
        let ts = rng.range(watermark - 2 * DAY, now - MINUTE);
        events.push(event(
            &format!("s3-{number}"),
            &format!("customer-{}", rng.range(0, 40)),
            &format!("vendor-{}", rng.range(0, 8)),
            rng.range(1, 100_000),
            ts,
            ts + rng.range(0, 1_000),
        ));
        if rng.chance(2) {
            let original = events[events.len() - 1].clone();
            events.push(replay(&original, (ts + 5_000).min(now)));
        }
    }
    events.sort_by_key(|event| event.ingest_time.as_millis());
    test.produce(events).await;
    test.fill_lake().await;

    let s3_database = test.new_database("batch_s3").await;
    let mut on_s3 = test.settings_for(&s3_database);
    fraud_testkit::s3::use_s3_lake(&mut on_s3.lake, "batch-s3");
    let s3_lake = Lake::open(&LakeRoot::configured(&on_s3.lake).expect("an S3 root"))
        .expect("open the S3 lake");
    let local = test.lake().store();
    let objects: Vec<_> = local.list(None).try_collect().await.expect("list the lake");
    assert!(objects.len() > 3, "a lake of several files: {objects:?}");
    for object in &objects {
        let bytes = local
            .get(&object.location)
            .await
            .expect("read an object")
            .bytes()
            .await
            .expect("read an object");
        s3_lake
            .store()
            .put(&object.location, PutPayload::from(bytes))
            .await
            .expect("copy an object to S3");
    }

    let from_directory = test.run(watermark, false).await;
    let from_s3 = test.run_on(&on_s3, watermark, false).await;
    assert_eq!(from_s3.watermark, from_directory.watermark);
    assert_eq!(from_s3.days, from_directory.days);
    let directory_tables = read_tables(&test.database.url).await;
    assert!(directory_tables.daily.len() > 40, "{directory_tables:?}");
    assert_tables_eq(
        "the run over the S3 lake",
        &read_tables(&s3_database.url).await,
        &directory_tables,
    );
    assert_tables_eq(
        "the run over the directory",
        &directory_tables,
        &model(&test.produced, watermark),
    );

    fraud_testkit::s3::delete_everything(&*s3_lake.store()).await;
}
