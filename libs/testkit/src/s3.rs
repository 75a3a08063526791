//! The S3-compatible store `deploy/dev` runs (s3proxy, the S3 API over `.dev/s3`), for
//! tests of the lake on S3. Each test takes a key prefix of its own in [`BUCKET`].

use fraud_config::{LakeConfig, Secret};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt};

/// Where it listens (plain HTTP, path-style requests); the same as in `deploy/dev`.
pub const ENDPOINT: &str = "http://127.0.0.1:9000";
/// The bucket `deploy/dev` creates.
pub const BUCKET: &str = "fraud-lake";
/// The credentials `deploy/dev` configures.
pub const ACCESS_KEY_ID: &str = "fraud-dev";
pub const SECRET_ACCESS_KEY: &str = "fraud-dev-secret";

/// Points `lake` at a new prefix of its own in the local store, named after `name`, with
/// the store's endpoint and credentials; returns the root (`s3://fraud-lake/<prefix>`).
pub fn use_s3_lake(lake: &mut LakeConfig, name: &str) -> String {
    lake.root = format!("s3://{BUCKET}/{}", crate::unique_name(name));
    lake.s3_endpoint = ENDPOINT.to_owned();
    lake.s3_region = "us-east-1".to_owned();
    lake.s3_access_key_id = ACCESS_KEY_ID.to_owned();
    lake.s3_secret_access_key = Secret::new(SECRET_ACCESS_KEY.to_owned());
    lake.root.clone()
}

/// Deletes every object of `store`: a test's lake, rooted at its own prefix.
pub async fn delete_everything(store: &dyn ObjectStore) {
    let objects: Vec<_> = store
        .list(None)
        .try_collect()
        .await
        .expect("list the store");
    for object in objects {
        store
            .delete(&object.location)
            .await
            .expect("delete an object");
    }
}
