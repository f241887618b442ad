//! The compute thread: panics, passes, deadlines and the token budget, on the tiny fixture.

use super::batch::run_batch;
use super::*;
use crate::tokenize::Input;

fn tiny() -> Arc<Model> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tiny-bert-multilabel");
    Arc::new(Model::load(&dir, &Default::default()).unwrap())
}

fn job(
    model: &Model,
    n: usize,
    deadline: Option<Instant>,
) -> (Job, oneshot::Receiver<Result<FinishedJob, JobError>>) {
    let texts: Vec<Input> = (0..n).map(|i| Input::Single(format!("text {i}"))).collect();
    Job::new(
        model.tokenize(&texts, Default::default()).unwrap(),
        HeadWork::Embed(Default::default()),
        deadline,
    )
}

#[test]
fn a_panicking_batch_fails_its_requests_and_the_compute_thread_is_restarted() {
    let model = tiny();
    let calls = AtomicUsize::new(0);
    let run: Box<RunBatch> = Box::new(move |m, batch, p, st| {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            // Hold the batch a moment so that the next job is queued behind it.
            std::thread::sleep(Duration::from_millis(50));
            panic!("injected fault");
        }
        run_batch(m, batch, p, st)
    });
    let w = ModelWorker::spawn_with(model.clone(), "v", BatchPolicy::default(), run).unwrap();
    assert!(w.alive());
    let (a, a_rx) = job(&model, 3, None);
    w.submit(a).unwrap();
    std::thread::sleep(Duration::from_millis(10));
    let (b, b_rx) = job(&model, 2, None);
    w.submit(b).unwrap();
    assert!(
        a_rx.blocking_recv().is_err(),
        "the panicked batch's reply is dropped"
    );
    // No compute thread during the restart pause; the queue still takes jobs.
    let t0 = Instant::now();
    while w.alive() && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        !w.alive(),
        "no compute thread between the panic and the restart"
    );
    let (c, c_rx) = job(&model, 1, None);
    w.submit(c).unwrap();
    // The queued jobs are run by the new thread.
    for (mut rx, n) in [(b_rx, 2), (c_rx, 1)] {
        let t0 = Instant::now();
        let done = loop {
            match rx.try_recv() {
                Ok(r) => break r.unwrap(),
                Err(oneshot::error::TryRecvError::Empty)
                    if t0.elapsed() < Duration::from_secs(10) =>
                {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => panic!("no answer from a restarted thread: {e:?}"),
            }
        };
        let Output::Embed(v) = done.output else {
            panic!("embed work gives embed output")
        };
        assert_eq!(v.len(), n);
    }
    assert_eq!(w.stats.restarts.load(Ordering::SeqCst), 1);
    assert!(w.alive(), "the restarted thread runs");
    // The batch's tokens are released right after its replies are sent.
    let t0 = Instant::now();
    while w.queue_state().tokens != 0 && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(w.queue_state().tokens, 0, "no tokens left counted");
    assert_eq!(w.queue_state().jobs, 0);
    w.drain();
}

#[test]
fn a_deadline_stops_a_long_job_between_passes() {
    let model = tiny();
    let policy = BatchPolicy {
        max_batch_tokens: 1,
        ..Default::default()
    };
    let w = ModelWorker::spawn(model.clone(), "v", policy).unwrap();
    let n = 20_000;
    let (mut a, a_rx) = job(&model, n, None);
    a.deadline = Some(Instant::now() + Duration::from_millis(20));
    w.submit(a).unwrap();
    assert!(matches!(
        a_rx.blocking_recv().unwrap(),
        Err(JobError::DeadlineExceeded)
    ));
    let passes = w.stats.batches.load(Ordering::SeqCst);
    assert!(passes < n, "stopped after {passes} of {n} passes");
    w.drain();
}

#[test]
fn the_token_budget_refuses_at_the_door() {
    let model = tiny();
    let policy = BatchPolicy {
        max_queue_tokens: 10,
        ..Default::default()
    };
    let w = ModelWorker::spawn(model.clone(), "v", policy).unwrap();
    // Pretend a job is ahead: its tokens are counted until it is done.
    w.stats.queued_tokens.store(8, Ordering::SeqCst);
    let (b, _b_rx) = job(&model, 2, None);
    let err = w.submit(b).unwrap_err();
    assert!(err.to_string().contains("tokens"), "{err}");
    assert_eq!(
        w.queue_state().tokens,
        8,
        "a refusal leaves nothing counted"
    );
    assert_eq!(w.queue_state().jobs, 0);
    let t = w.reserve(2, None).unwrap();
    assert_eq!(w.queue_state().tokens, 10);
    assert!(
        w.reserve(1, None).is_err(),
        "a full queue refuses before tokenizing"
    );
    drop(t);
    assert_eq!(
        w.queue_state().tokens,
        8,
        "a caller giving up releases its tokens"
    );
    assert_eq!(w.queue_state().jobs, 0);
    w.stats.queued_tokens.store(0, Ordering::SeqCst);
    // A sent job's tokens: released by the compute thread, or by the ticket when the
    // caller leaves first; never both.
    let t = w.reserve(5, None).unwrap();
    let (c, c_rx) = job(&model, 1, None);
    let mut t = t;
    w.send(&mut t, c).unwrap();
    c_rx.blocking_recv().unwrap().unwrap();
    assert_eq!(w.queue_state().tokens, 0);
    assert_eq!(w.queue_state().jobs, 0);
    w.drain();
}
