// The importer package through a gateway with a small write quota: one import stopped at the
// quota (NoWaitForQuota), then one that waits it out and resumes; one JSON line each, as
// clients/typescript/src/quota.ts prints them. GENSEARCH_ADDRESS, GENSEARCH_API_KEY as in the
// example; GENSEARCH_COLLECTION: a collection with an int property "n" and 2-dimensional
// vectors.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"gensearch/clients/go/gatewayenv"
	retrievalv1 "gensearch/clients/go/gensearch/retrieval/v1"
	"gensearch/clients/go/importer"
	"gensearch/clients/go/rpcerror"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"
)

// objects: object i has n = first + i, or a text where bad (rejected by retrieval: n is an int).
func objects(count, first int, bad ...int) []*retrievalv1.DataObject {
	var out []*retrievalv1.DataObject
	for i := 0; i < count; i++ {
		var n interface{} = first + i
		for _, b := range bad {
			if b == i {
				n = fmt.Sprintf("bad %d", i)
			}
		}
		properties, err := structpb.NewStruct(map[string]interface{}{"n": n})
		check(err)
		out = append(out, &retrievalv1.DataObject{Properties: properties, Vector: []float32{1, float32(i) / 100}})
	}
	return out
}

func main() {
	addr, err := gatewayenv.Address()
	check(err)
	conn, err := grpc.Dial(addr, grpc.WithInsecure())
	check(err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if key := gatewayenv.APIKey(); key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}
	retrieval := retrievalv1.NewRetrievalServiceClient(conn)
	collection := os.Getenv("GENSEARCH_COLLECTION")

	_, err = importer.Import(ctx, retrieval, collection, objects(15, 100, 3), importer.Options{BatchSize: 5, NoWaitForQuota: true})
	var stopped *importer.StreamError
	if !errors.As(err, &stopped) {
		log.Fatalf("not stopped at the quota: %v", err)
	}
	show(map[string]interface{}{"stopped": map[string]interface{}{"reason": stopped.Reason,
		"hasReason": rpcerror.HasReason(err, rpcerror.QuotaExceeded), "metadata": stopped.Metadata,
		"retryDelayMs": stopped.RetryDelay.Milliseconds(), "objectErrors": stopped.ObjectErrors}})

	sent, waits := 0, [][2]float64{}
	result, err := importer.Import(ctx, retrieval, collection, objects(20, 0, 2, 17), importer.Options{
		BatchSize: 5, ObjectsPerCall: 15, OnSent: func(n int) { sent += n },
		OnQuotaWait: func(wait time.Duration, e *importer.StreamError) {
			waits = append(waits, [2]float64{float64(wait.Microseconds()) / 1000, float64(e.RetryDelay.Microseconds()) / 1000})
		}})
	check(err)
	show(map[string]interface{}{"received": result.Received, "imported": result.Imported, "errors": result.Errors,
		"errorsTruncated": result.ErrorsTruncated, "sent": sent, "waits": waits})
}

func show(value interface{}) {
	line, err := json.Marshal(value)
	check(err)
	fmt.Println(string(line))
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
