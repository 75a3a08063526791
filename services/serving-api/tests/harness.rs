//! The harness itself: a serving API with a database and namespaces of its own starts,
//! serves its document, and asks for a key.

mod common;

use common::{READ_KEY, ServingTest, get};

#[tokio::test]
async fn a_test_serving_api_starts_serves_its_document_and_asks_for_a_key() {
    let test = ServingTest::create("serving-harness").await;
    let serving = test.start_serving().await;
    let (status, document) = get(&serving.base, "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.1.0");
    let (status, _) = get(&serving.base, "/v1/rules", None).await;
    assert!(status == 401 || status == 404, "{status}");
    let _ = READ_KEY;
    serving.shutdown.trigger();
    test.remove().await;
}
