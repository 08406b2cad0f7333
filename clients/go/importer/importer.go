// Package importer is a bulk import over ImportObjects (client streaming) that waits out
// the gateway's per-tenant write quotas, as the Python client's import_ does
// (docs/clients.md#bulk-import-and-the-write-quotas): a stream the gateway stops at a write
// quota (RESOURCE_EXHAUSTED, ErrorInfo QUOTA_EXCEEDED, RetryInfo) is resumed after the
// objects the gateway received, none sent twice, once the RetryInfo delay (plus jitter) has
// passed; the parts merge into one Result whose Errors[i].Index is the object's position in
// what was passed.
package importer

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"sort"
	"strconv"
	"strings"
	"time"

	retrievalv1 "gensearch/clients/go/gensearch/retrieval/v1"
	"gensearch/clients/go/rpcerror"

	"google.golang.org/grpc/status"
)

// WriteQuotas are the gateway's per-tenant write quotas an import waits out
// (docs/operations.md#quotas).
var WriteQuotas = map[string]bool{"objects_written_per_minute": true, "bytes_written_per_minute": true}

// ObjectError says why one object was not written; Index is its position in what was passed.
type ObjectError struct {
	Index   int    `json:"index"`
	ID      string `json:"id"`
	Field   string `json:"field"`
	Message string `json:"message"`
}

// Result is what an import did.
type Result struct {
	Received int           `json:"received"`
	Imported int           `json:"imported"`
	Errors   []ObjectError `json:"errors"`
	// More objects were rejected than listed: Received - Imported counts them all.
	ErrorsTruncated bool `json:"errorsTruncated"`
}

// Options of Import; the zero value waits out the quotas, 100 objects a message, 1000 a
// stream, no deadline.
type Options struct {
	BatchSize      int           // objects a message (default 100)
	ObjectsPerCall int           // objects a stream, each acknowledged before the next (default 1000)
	Timeout        time.Duration // each stream's deadline, its waits for the quota included (0: none)
	// OnSent is called as each message of n objects goes out, each object once (resent or not).
	OnSent func(n int)
	// NoWaitForQuota returns the quota's *StreamError instead of waiting (Python's
	// wait_for_quota=False, TypeScript's waitForQuota: false).
	NoWaitForQuota bool
	// OnQuotaWait is called before each wait for a write quota.
	OnQuotaWait func(wait time.Duration, err *StreamError)
}

// StreamError is a failed ImportObjects stream: its status read by rpcerror (Code, Reason,
// Metadata, RetryDelay ...) and the objects its earlier messages rejected. Metadata
// (received_count, imported_count, rejected_indexes) and ObjectErrors count from the
// stream's first object, also when it was resumed after a wait (the message then says
// where).
type StreamError struct {
	*rpcerror.Failure
	// The objects earlier messages of the stream rejected, with their reasons (stream positions).
	ObjectErrors []ObjectError
}

// RejectedIndexes are the stream positions of metadata rejected_indexes ("3,17,42", ending
// ",…" when cut), and whether the list was cut.
func (e *StreamError) RejectedIndexes() ([]int, bool) {
	value := e.Metadata["rejected_indexes"]
	var indexes []int
	for _, part := range strings.Split(strings.TrimSuffix(value, "…"), ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(part)); err == nil && n >= 0 {
			indexes = append(indexes, n)
		}
	}
	return indexes, strings.HasSuffix(value, "…")
}

func newStreamError(st *status.Status) *StreamError {
	e := &StreamError{Failure: rpcerror.FromStatus(st)}
	for _, detail := range st.Details() {
		if answer, ok := detail.(*retrievalv1.ImportObjectsResponse); ok {
			for _, o := range answer.Errors {
				e.ObjectErrors = append(e.ObjectErrors, plain(o, 0))
			}
		}
	}
	return e
}

func plain(o *retrievalv1.ObjectError, shift int) ObjectError {
	return ObjectError{Index: int(o.Index) + shift, ID: o.Id, Field: o.Field, Message: o.Message}
}

// QuotaWait is how long to wait when the service says retryDelay: that, 50 ms for the
// clocks' granularity, and a random part of up to a tenth of it (at most 1 s), so a tenant's
// importers do not all come back at the same instant.
func QuotaWait(retryDelay time.Duration) time.Duration {
	if retryDelay < 0 {
		retryDelay = 0
	}
	spread := retryDelay / 10
	if spread > time.Second {
		spread = time.Second
	}
	return retryDelay + 50*time.Millisecond + time.Duration(rand.Float64()*float64(spread))
}

// Import loads objects over ImportObjects, opts.BatchSize a message, in streams of
// opts.ObjectsPerCall (each acknowledged before the next). On an error it returns what the
// streams before the failed one wrote, and the error (a *StreamError for a status).
func Import(ctx context.Context, client retrievalv1.RetrievalServiceClient, collection string,
	objects []*retrievalv1.DataObject, opts Options) (*Result, error) {
	if opts.BatchSize == 0 {
		opts.BatchSize = 100
	}
	if opts.ObjectsPerCall == 0 {
		opts.ObjectsPerCall = 1000
	}
	if opts.BatchSize < 1 {
		return nil, fmt.Errorf("BatchSize must be at least 1")
	}
	if opts.ObjectsPerCall < opts.BatchSize {
		opts.ObjectsPerCall = opts.BatchSize
	}
	total := &Result{Errors: []ObjectError{}}
	for offset := 0; offset == 0 || offset < len(objects); offset += opts.ObjectsPerCall {
		end := offset + opts.ObjectsPerCall
		if end > len(objects) {
			end = len(objects)
		}
		s := &stream{client: client, collection: collection, objects: objects[offset:end], offset: offset, opts: opts}
		part, err := s.run(ctx)
		if err != nil {
			return total, err
		}
		total.Received += part.Received
		total.Imported += part.Imported
		total.Errors = append(total.Errors, part.Errors...)
		total.ErrorsTruncated = total.ErrorsTruncated || part.ErrorsTruncated
		if len(objects) == 0 {
			break // an empty stream still names the collection, so a wrong name is reported
		}
	}
	return total, nil
}

type stream struct {
	client      retrievalv1.RetrievalServiceClient
	collection  string
	objects     []*retrievalv1.DataObject
	offset      int
	opts        Options
	result      Result
	start       int   // objects received by the service in earlier parts
	position    int   // objects of the current part gone out, from the stream's start
	reported    int   // objects reported to OnSent (each once, resent or not)
	rejected    []int // earlier parts' rejections, stream positions
	rejectedCut bool
}

func (s *stream) sent(count int) {
	s.position += count
	if s.opts.OnSent != nil && s.position > s.reported {
		s.opts.OnSent(s.position - s.reported)
	}
	if s.position > s.reported {
		s.reported = s.position
	}
}

// send runs one ImportObjects call over the objects from s.start.
func (s *stream) send(ctx context.Context) (*retrievalv1.ImportObjectsResponse, error) {
	call, err := s.client.ImportObjects(ctx)
	if err != nil {
		return nil, err
	}
	rest := s.objects[s.start:]
	for at := 0; at == 0 || at < len(rest); at += s.opts.BatchSize {
		end := at + s.opts.BatchSize
		if end > len(rest) {
			end = len(rest)
		}
		message := &retrievalv1.ImportObjectsRequest{Objects: rest[at:end]}
		if at == 0 { // the first message names the collection (even an empty stream's)
			message.Collection = s.collection
		}
		if err := call.Send(message); err == io.EOF {
			break // the server ended the stream: its status comes with CloseAndRecv
		} else if err != nil {
			return nil, err
		}
		s.sent(end - at)
	}
	return call.CloseAndRecv()
}

func (s *stream) run(ctx context.Context) (*Result, error) {
	s.result.Errors = []ObjectError{}
	var deadline time.Time
	if s.opts.Timeout > 0 {
		deadline = time.Now().Add(s.opts.Timeout)
	}
	for {
		s.position = s.start
		callCtx, cancel := ctx, context.CancelFunc(func() {})
		if !deadline.IsZero() {
			callCtx, cancel = context.WithDeadline(ctx, deadline)
		}
		reply, err := s.send(callCtx)
		cancel()
		if err != nil {
			st, ok := status.FromError(err)
			if !ok {
				return nil, err
			}
			failure := newStreamError(st)
			received, resumable := s.resumable(failure)
			if !resumable || failure.RetryDelay == nil || s.opts.NoWaitForQuota {
				return nil, s.wholeStream(failure)
			}
			wait := QuotaWait(*failure.RetryDelay)
			if !deadline.IsZero() && !time.Now().Add(wait).Before(deadline) {
				return nil, s.wholeStream(failure) // waiting would pass the deadline: not begun
			}
			s.addPart(failure)
			if s.opts.OnQuotaWait != nil {
				s.opts.OnQuotaWait(wait, failure)
			}
			select {
			case <-time.After(wait):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			s.start += received
			continue
		}
		for _, o := range reply.Errors {
			s.result.Errors = append(s.result.Errors, plain(o, s.offset+s.start))
		}
		s.result.Received += int(reply.ReceivedCount)
		s.result.Imported += int(reply.ImportedCount)
		s.result.ErrorsTruncated = s.result.ErrorsTruncated || reply.ErrorsTruncated
		return &s.result, nil
	}
}

// resumable: how many objects of the current part the gateway received before it stopped
// the stream at a write quota, when waiting can help.
func (s *stream) resumable(e *StreamError) (int, bool) {
	if e.Reason != rpcerror.QuotaExceeded || !WriteQuotas[e.Metadata["quota"]] {
		return 0, false
	}
	received, err := strconv.Atoi(e.Metadata["received_count"])
	if _, err2 := strconv.Atoi(e.Metadata["imported_count"]); err != nil || err2 != nil {
		return 0, false
	}
	// The refused message was not received: at least one object is left to send.
	return received, received >= 0 && received < len(s.objects)-s.start
}

// addPart adds what the part the quota stopped wrote: its counts, and an error for each
// object it rejected, with its reason (or, past what fits in the error, its position alone).
func (s *stream) addPart(e *StreamError) {
	received, _ := strconv.Atoi(e.Metadata["received_count"])
	imported, _ := strconv.Atoi(e.Metadata["imported_count"])
	s.result.Received += received
	s.result.Imported += imported
	indexes, cut := e.RejectedIndexes()
	reasons := map[int]ObjectError{}
	for _, o := range e.ObjectErrors {
		reasons[o.Index] = o
	}
	seen := map[int]bool{}
	var positions []int
	for _, i := range indexes {
		if !seen[i] {
			seen[i], positions = true, append(positions, i)
		}
	}
	for i := range reasons {
		if !seen[i] {
			seen[i], positions = true, append(positions, i)
		}
	}
	sort.Ints(positions)
	for _, index := range positions {
		position := s.start + index
		if position < 0 || position >= len(s.objects) {
			continue
		}
		s.rejected = append(s.rejected, position)
		known, ok := reasons[index]
		if !ok {
			known = ObjectError{ID: s.objects[position].GetId(), Message: "rejected by the service; its reason " +
				"did not fit in the error that stopped the stream at the write quota (write this object alone to see why)"}
		}
		known.Index = s.offset + position
		s.result.Errors = append(s.result.Errors, known)
	}
	listed := len(positions) < received-imported
	s.rejectedCut = s.rejectedCut || cut || listed
	s.result.ErrorsTruncated = s.result.ErrorsTruncated || cut || listed
}

// wholeStream makes the counts of e, the failure of a stream resumed after waiting, the
// whole stream's, from its first object, as for a stream never resumed.
func (s *stream) wholeStream(e *StreamError) *StreamError {
	if s.start == 0 {
		return e
	}
	received, err := strconv.Atoi(e.Metadata["received_count"])
	imported, err2 := strconv.Atoi(e.Metadata["imported_count"])
	if err != nil || err2 != nil {
		e.Message += fmt.Sprintf(" (%d objects of the stream were imported before it was resumed at its "+
			"object %d after waiting for the write quota)", s.result.Imported, s.start)
		return e
	}
	indexes, cut := e.RejectedIndexes()
	rejected := append([]string{}, intsToStrings(s.rejected)...)
	for _, i := range indexes {
		rejected = append(rejected, strconv.Itoa(s.start+i))
	}
	e.Metadata["received_count"] = strconv.Itoa(s.start + received)
	e.Metadata["imported_count"] = strconv.Itoa(s.result.Imported + imported)
	if len(rejected) > 0 {
		e.Metadata["rejected_indexes"] = strings.Join(rejected, ",")
		if cut || s.rejectedCut {
			e.Metadata["rejected_indexes"] += ",…"
		}
	}
	var all []ObjectError
	for _, o := range s.result.Errors {
		o.Index -= s.offset
		all = append(all, o)
	}
	for _, o := range e.ObjectErrors {
		o.Index += s.start
		all = append(all, o)
	}
	e.ObjectErrors = all
	e.Message += fmt.Sprintf(" (the stream was resumed at its object %d after waiting for the write quota: "+
		"the counts are from its start)", s.start)
	return e
}

func intsToStrings(values []int) []string {
	out := make([]string, len(values))
	for i, v := range values {
		out[i] = strconv.Itoa(v)
	}
	return out
}
