-- needs: read
-- KEYS: convs, then the keys a run before asked to declare (below). ARGV: caller (read.lua), tag, start bound, page size, most members to read,
-- most turns to check (below), then where each conversation's check for a gone turn starts
-- and how many of its turns it checks (read.lua's missing_turn: a window).
-- Returns {next, gone, stale, member1, row1, ...}: next is '' on the last page, else the
-- member the next page starts after; gone, the members read whose conversation hash is
-- missing; stale, the ids of the page's conversations with a turn of their window that has
-- no key here (read.lua's missing_turn: the store drops those turns with drop_missing.lua, every
-- turn declared, and reads the page again, so no interaction_count shown counts a turn that
-- is found gone). Checking costs O(the page's items times the window): once a page holds an
-- item and has checked the given number of turns, it ends early (fewer items, its last one
-- as next).
-- Two owners may share the list (the two legacy owners of one tag, store.Owner.digest):
-- the other one's conversations are skipped, neither shown nor touched. A page reads at
-- most the given number of members; past it the page ends early (fewer items, or none
-- when the other owner's fill all it read) with the last member read as next: paging
-- moves on and skips none of the caller's, and no page costs more than that number of
-- members (and their hashes declared: a run at a time, at most two runs of hashes),
-- however many of the other one's come first. Before, a page read on until its first
-- item, declaring the members' hashes a run at a time: behind a much larger owner it ran
-- out of runs (ABORTED).
-- A member whose conversation hash is missing belongs to a conversation that expired (its
-- time to live), or, mid-reshard on the slot's new node, to one whose hash has not moved
-- yet: it is not shown, the page is filled from further on, and the store removes it
-- (with its bytes) by reconcile.lua, which declares the hash: Redis refuses that run
-- while the slot is half moved (the call answers UNAVAILABLE) and, when the move ended
-- since this run, finds the hash and the store reads the page again: a live
-- conversation never leaves the list nor a page.
local who, tag = ARGV[1], ARGV[2]
local n = tonumber(ARGV[4])
local budget = tonumber(ARGV[5])
local turns = tonumber(ARGV[6])
local start = ARGV[3]
local offset, window = tonumber(ARGV[7]), tonumber(ARGV[8])
local gone, stale = {}, {}
local out = {'', gone, stale}
local found, read, checked = 0, 0, 0
local last, shown = nil, nil
-- Every key read is declared: a member's hash, then (a conversation of the caller's with
-- turns) its list, then its window's turns, are noted when they are not, and not read
-- (read.lua's declare_first): the run stops, nothing written, naming them all, and the
-- store runs the page again with them declared. A member whose hash was not read leaves
-- the rest of its batch unsure (whether it is the caller's, how many the page holds): the
-- run stops after that batch, naming too the hashes of the members that may follow (the
-- most a page reads), so that the next run reads on through them. A page so takes up to
-- four runs (hashes, lists, windows, the answer), each with every key it reads declared.
-- A list is declared only when its conversation counts turns: a key declared and missing
-- makes Redis refuse the run while a reshard moves the slot (TRYAGAIN), and an empty
-- conversation has no list.
local notes, blind = {}, false
local function unsure(after)
  if not blind then return end
  local more = redis.call('ZRANGE', KEYS[1], '(' .. after, '-', 'BYLEX', 'REV', 'LIMIT', 0,
                          budget)
  for _, member in ipairs(more) do
    local conv = tag .. ':conv:' .. string.sub(member, 17)
    note_undeclared({conv}, notes)
  end
  declare_first(notes)
end
local function answer()
  declare_first(notes)
  return out
end
while true do
  -- At most `budget` members read, whether the page holds an item yet or not: a page of
  -- one owner behind many of the other's ends with none, its next past them (a later
  -- page goes on from there), rather than reading (and declaring, a run at a time) the
  -- whole list.
  if read >= budget then
    out[1] = last
    return answer()
  end
  local want = math.min(n + 1 - found, budget - read)
  local members = redis.call('ZRANGE', KEYS[1], start, '-', 'BYLEX', 'REV', 'LIMIT', 0,
                             want)
  for _, member in ipairs(members) do
    read = read + 1
    last = member
    local cid = string.sub(member, 17)
    local conv = tag .. ':conv:' .. cid
    if note_undeclared({conv}, notes) then
      blind = true
    else
      local row = conversation(conv)
      if not row[1] then
        gone[#gone + 1] = member
      elseif owns(row[1], row[18], who) then
        if found == n or (found > 0 and checked >= turns) then
          out[1] = shown
          return answer()
        end
        local listed, missing = 0, false
        if tonumber(row[5] or '0') > 0 or redis.call('HEXISTS', conv, 'drop_pending') == 1 then
          listed, missing = missing_turn(tag, conv .. ':ints', offset, window, notes)
        end
        checked = checked + listed
        if missing then stale[#stale + 1] = cid end
        out[#out + 1] = member
        out[#out + 1] = row
        shown = member
        found = found + 1
      end
    end
  end
  if #members < want then return answer() end
  unsure(last)
  start = '(' .. last
end
