//! The engine's bounds, whatever clients ask and writers do: the rows all windows may hold, and
//! the changes a window being read may have waiting.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::def::{Def, Table};
use super::{State, Sub, ViewItem, ViewSink, WinId, MAX_HELD_ROWS, MAX_WAITING};
use crate::db::views::Column;
use crate::event::{Epoch, Event, LogRow, Position};
use crate::feed::FeedError;

fn table() -> Arc<Table> {
    let cols = vec![Column {
        name: "id".into(),
        pg_type: "bigint".into(),
        not_null: true,
    }];
    Arc::new(Table::new("t", "t", cols, &["id".to_owned()]).unwrap())
}

fn def(limit: usize) -> Def {
    let mut def = Def::by_key(table(), limit);
    def.id = format!("t limit {limit}");
    def
}

fn sub(id: u64) -> (Sub, mpsc::Receiver<ViewItem>) {
    let (tx, rx) = mpsc::channel(4);
    let sink = ViewSink {
        tx,
        overflow: CancellationToken::new(),
    };
    (
        Sub {
            id,
            sink,
            needs_view: true,
        },
        rx,
    )
}

fn insert(seq: i64, id: i64) -> Arc<Event> {
    let row = LogRow {
        seq,
        pos: 1,
        kind: "t_created".into(),
        tbl: "t".into(),
        op: "insert".into(),
        row_id: id.to_string(),
        topics: vec!["t".into()],
        data: format!(r#"{{"id":{id}}}"#),
        committed_at: chrono::Utc::now(),
        old: None,
        moved_from: None,
        before: None,
    };
    Arc::new(Event::from_row(row, &Epoch::new("e")))
}

#[test]
fn a_window_past_the_rows_all_windows_may_hold_is_refused_and_its_room_comes_back_when_one_goes() {
    let epoch = Epoch::new("e");
    let mut state = State::default();
    let mut held = 0;
    let mut refused = None;
    for limit in 1..=1_000 {
        let (s, _rx) = sub(limit as u64);
        match state.add(def(limit), s, &epoch) {
            Ok(Some(_)) => held += 2 * limit,
            Ok(None) => panic!("a new definition shares no window"),
            Err(e) => {
                refused = Some((limit, e));
                break;
            }
        }
    }
    let (limit, err) = refused.expect("the budget ends before 1,000 windows of limits 1 to 1,000");
    assert!(matches!(err, FeedError::Full(_)), "{err:?}");
    assert!(held <= MAX_HELD_ROWS && held + 2 * limit > MAX_HELD_ROWS, "{held}");
    assert_eq!(state.held, held);
    // The last subscribers of the two largest windows leave: their rows make room for it.
    state.remove(limit as u64 - 1);
    state.remove(limit as u64 - 2);
    let (s, _rx) = sub(9_999);
    assert!(matches!(state.add(def(limit), s, &epoch), Ok(Some(_))));
}

#[test]
fn a_window_being_read_keeps_at_most_max_waiting_changes_and_is_read_once_more_past_them() {
    let epoch = Epoch::new("e");
    let mut state = State::default();
    let (s, _rx) = sub(1);
    let id: WinId = state.add(def(5), s, &epoch).unwrap().expect("a new window is read");
    let mut reloads = Vec::new();
    for i in 0..=MAX_WAITING as i64 {
        state.on_event(insert(i + 2, i), &epoch, &mut reloads);
    }
    let slot = &state.windows[&id];
    assert!(slot.stale, "past the cap the window is read again");
    assert!(slot.waiting.as_ref().is_some_and(|w| w.len() < MAX_WAITING));
    // The read that was running ends: its rows are not installed; a new read is asked for.
    state.install(
        id,
        Position::end_of(1),
        vec![],
        super::Counted::At(0),
        &epoch,
        &mut reloads,
    );
    assert_eq!(reloads, vec![id]);
    assert!(state.windows[&id].window.is_none());
}
