//! A lake in a local directory: the scenarios every lake passes (tests/common), and
//! what only a local lake has: files staged under a temporary name, and a writer's
//! leftovers of them removed on recovery.

#[macro_use]
mod common;

use std::path::PathBuf;

use common::chunk;
use fraud_lake::{ChunkId, Lake, LakeRoot, ResumeAt};

/// A lake in a fresh temporary directory, removed when dropped.
struct TempLake {
    dir: PathBuf,
    lake: Lake,
}

impl TempLake {
    fn new() -> Self {
        let dir = std::env::temp_dir()
            .join(fraud_testkit::unique_name("lake-test"))
            .join("nested");
        let lake = Lake::open(&LakeRoot::Local(dir.clone())).expect("open the lake");
        assert!(dir.is_dir(), "a missing directory is created");
        Self { dir, lake }
    }
}

impl Drop for TempLake {
    fn drop(&mut self) {
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

/// A `#[tokio::test]` per shared scenario, each on a fresh local lake.
macro_rules! on_a_local_lake {
    ($($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test]
            async fn $scenario() {
                let temp = TempLake::new();
                common::$scenario(&temp.lake).await;
            }
        )*
    };
}

every_scenario!(on_a_local_lake);

#[tokio::test]
async fn recovery_removes_an_incomplete_newest_chunk_and_staged_leftovers() {
    let temp = TempLake::new();
    let complete = chunk(2, 0..=49, 2);
    temp.lake.write_chunk(&complete, 1000).await.unwrap();
    // The writer stopped after the first of three files of the next chunk, while the
    // second was still staged under its temporary name.
    let interrupted = chunk(2, 50..=79, 3);
    assert_eq!(interrupted.files().len(), 3);
    let written = &interrupted.files()[0];
    let bytes = written.encode(interrupted.rows(), 1000).unwrap();
    let local = temp.lake.local_dir().unwrap().to_owned();
    let final_path = local.join(written.file().path().as_ref());
    std::fs::write(&final_path, &bytes).unwrap();
    let staged_file = interrupted.files()[1].file();
    let staged_path = local.join(format!("{}#1", staged_file.path().as_ref()));
    std::fs::create_dir_all(staged_path.parent().unwrap()).unwrap();
    std::fs::write(&staged_path, &bytes[..bytes.len() / 2]).unwrap();
    // Another partition's staged file belongs to its own writer: left alone.
    let foreign_staged = local.join(format!(
        "{}#1",
        fraud_lake::LakeFile::new(ChunkId::new(3, 0, 9).unwrap(), staged_file.date())
            .path()
            .as_ref()
    ));
    std::fs::write(&foreign_staged, b"partial").unwrap();

    // A reader sees the state without changing anything.
    let states = temp.lake.partition_states().await.unwrap();
    let incomplete = states[&2].incomplete.clone().expect("an incomplete chunk");
    assert_eq!(incomplete.id, interrupted.id());
    assert_eq!(incomplete.chunk_rows, 30);
    assert_eq!(incomplete.rows_found, written.rows() as u64);
    assert_eq!(states[&2].complete_through(), Some(49));
    assert!(final_path.exists() && staged_path.exists());

    // The writer recovers: both leftovers are gone, and it resumes at offset 50.
    let recoveries = temp.lake.recover(&[2]).await.unwrap();
    assert_eq!(recoveries.len(), 1);
    let recovery = &recoveries[0];
    assert_eq!(recovery.state.resume_at(), ResumeAt::Offset(50));
    assert_eq!(recovery.removed_files, vec![written.file()]);
    assert_eq!(recovery.removed_staged, vec![staged_path.clone()]);
    assert!(!final_path.exists() && !staged_path.exists());
    assert!(foreign_staged.exists());

    // Rewritten (with other boundaries), the lake is whole again.
    temp.lake
        .write_chunk(&chunk(2, 50..=99, 3), 1000)
        .await
        .unwrap();
    let recoveries = temp.lake.recover(&[2]).await.unwrap();
    assert_eq!(recoveries[0].state.resume_at(), ResumeAt::Offset(100));
    assert_eq!(recoveries[0].state.complete_chunks, 2);
    assert!(recoveries[0].removed_files.is_empty());
}
