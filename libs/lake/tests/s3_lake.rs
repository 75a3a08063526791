//! A lake on S3: the scenarios every lake passes (tests/common), against the
//! S3-compatible store `deploy/dev` runs, each under a key prefix of its own. The claims'
//! fence rests on the store's create-if-absent PUT (`If-None-Match: *`), so the race
//! between writers is run here against a real server, not only on a local directory.

#[macro_use]
mod common;

use fraud_lake::{Lake, LakeRoot};

/// A lake under a new prefix of the local S3 store.
fn s3_lake(name: &str) -> Lake {
    let mut config = fraud_testkit::local_settings().lake;
    fraud_testkit::s3::use_s3_lake(&mut config, name);
    let root = LakeRoot::configured(&config).expect("an S3 root");
    assert!(matches!(root, LakeRoot::S3 { .. }), "{root:?}");
    Lake::open(&root).expect("open the lake")
}

/// A `#[tokio::test]` per shared scenario, each on a fresh prefix.
macro_rules! on_an_s3_lake {
    ($($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $scenario() {
                let lake = s3_lake(stringify!($scenario));
                common::$scenario(&lake).await;
                fraud_testkit::s3::delete_everything(&*lake.store()).await;
            }
        )*
    };
}

every_scenario!(on_an_s3_lake);

#[tokio::test]
async fn wrong_credentials_are_an_error_naming_the_operation_not_an_empty_lake() {
    let mut config = fraud_testkit::local_settings().lake;
    fraud_testkit::s3::use_s3_lake(&mut config, "wrong-key");
    config.s3_secret_access_key = fraud_config::Secret::new("not-the-secret".into());
    let lake = Lake::open(&LakeRoot::configured(&config).unwrap()).unwrap();
    let error = lake
        .list()
        .await
        .expect_err("the store refuses the request");
    assert!(error.to_string().contains("list"), "{error}");
}
