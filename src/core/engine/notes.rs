//! Notes and counters. They keep no memory of their own: the rows are everything, so these are
//! plain functions of a [`Tx`]. An expired note is absent to every reader; housekeeping only
//! reclaims its space.

use super::{Reply, Tx};
use crate::clock::{seconds_left, Millis};
use crate::core::types::*;
use crate::store::{NoteRow, Values};

/// The note if it is live now; an expired row counts as absent.
fn live_note(tx: &mut Tx, key: &str) -> CoreResult<Option<NoteRow>> {
    let now = tx.now();
    Ok(tx
        .db(|s| s.note_get(key))?
        .filter(|n| n.expires_at.is_none_or(|at| at > now)))
}

fn note_view(n: NoteRow, now: Millis) -> NoteView {
    NoteView {
        key: n.key,
        value: n.value,
        author: n.author,
        expires_in_seconds: n.expires_at.map(|at| seconds_left(at, now)),
    }
}

fn put(
    tx: &mut Tx,
    key: String,
    value: String,
    author: Option<String>,
    ttl_ms: Option<Millis>,
) -> CoreResult<Saved> {
    let expires_at = ttl_ms.map(|t| tx.now() + t);
    tx.db(|s| {
        s.note_put(&NoteRow {
            key,
            value,
            author,
            expires_at,
        })
    })?;
    Ok(Saved { saved: true })
}

pub(super) fn set_note(
    tx: &mut Tx,
    key: String,
    value: String,
    author: Option<String>,
    ttl_ms: Option<Millis>,
    reply: Reply<Saved>,
) {
    let r = put(tx, key, value, author, ttl_ms);
    tx.respond(reply, r)
}

pub(super) fn get_note(tx: &mut Tx, key: &str, reply: Reply<GetNoteResult>) {
    let now = tx.now();
    let r = live_note(tx, key).map(|n| match n {
        Some(n) => GetNoteResult::Found(note_view(n, now)),
        None => GetNoteResult::Missing { found: false },
    });
    tx.respond(reply, r)
}

/// How much of each note's value the status snapshot shows: it is a glance, not a dump (a
/// value may be hundreds of KiB, and the snapshot is built on the engine thread).
pub(super) const STATUS_VALUE_CHARS: usize = 120;

/// One page of live notes for the status snapshot: each value read by the store only as far
/// as [`STATUS_VALUE_CHARS`] characters and one more (so a longer one is known), then cut to
/// [`STATUS_VALUE_CHARS`] marked with `…`.
pub(super) fn status_page(tx: &mut Tx, page: &Page) -> CoreResult<Paged<NoteView>> {
    let mut notes = note_page(tx, page, Values::Preview(STATUS_VALUE_CHARS + 1))?;
    for n in &mut notes.items {
        clip(&mut n.value, STATUS_VALUE_CHARS);
    }
    Ok(notes)
}

/// Cuts `value` to `chars` characters, marking the cut with `…`.
pub(super) fn clip(value: &mut String, chars: usize) {
    if let Some((at, _)) = value.char_indices().nth(chars) {
        value.truncate(at);
        value.push('…');
    }
}

/// One page of live notes, in key order (values left empty without `page.values`; the page
/// stops once its values pass [`MAX_PAGE_VALUE_BYTES`]).
pub(super) fn list_notes(tx: &mut Tx, page: &Page, reply: Reply<Paged<NoteView>>) {
    let values = if page.values {
        Values::Whole
    } else {
        Values::Omit
    };
    let r = note_page(tx, page, values);
    tx.respond(reply, r)
}

fn note_page(tx: &mut Tx, page: &Page, values: Values) -> CoreResult<Paged<NoteView>> {
    let now = tx.now();
    tx.db(|s| {
        s.note_page(
            now,
            page.after.as_deref(),
            page.limit,
            values,
            MAX_PAGE_VALUE_BYTES,
        )
    })
    .map(|(rows, more)| {
        let next_cursor = more.then(|| rows.last().map(|n| n.key.clone())).flatten();
        Paged {
            items: rows.into_iter().map(|n| note_view(n, now)).collect(),
            next_cursor,
        }
    })
}

pub(super) fn delete_note(tx: &mut Tx, key: &str, reply: Reply<Deleted>) {
    let r = (|| {
        let existed = live_note(tx, key)?.is_some();
        tx.db(|s| s.note_delete(key))?;
        Ok(Deleted { deleted: existed })
    })();
    tx.respond(reply, r)
}

pub(super) fn set_note_if(
    tx: &mut Tx,
    key: String,
    expected: String,
    new_value: String,
    author: Option<String>,
    ttl_ms: Option<Millis>,
    reply: Reply<Swapped>,
) {
    let r = (|| {
        let current = live_note(tx, &key)?.map(|n| n.value).unwrap_or_default();
        if current != expected {
            return Ok(Swapped { swapped: false });
        }
        put(tx, key, new_value, author, ttl_ms)?;
        Ok(Swapped { swapped: true })
    })();
    tx.respond(reply, r)
}

pub(super) fn increment_counter(tx: &mut Tx, name: &str, by: i64, reply: Reply<CounterValue>) {
    let r = match tx.db(|s| s.counter_add(name, by)) {
        Ok(Some(value)) => Ok(CounterValue { value }),
        Ok(None) => Err(CoreError::invalid(
            "by",
            "would overflow the counter's 64-bit signed range",
        )),
        Err(e) => Err(e),
    };
    tx.respond(reply, r)
}

/// Housekeeping: deletes expired notes (readers already treat them as gone).
pub(super) fn purge_expired(tx: &mut Tx, now: Millis) -> CoreResult<()> {
    tx.db(|s| s.notes_purge_expired(now))?;
    Ok(())
}
