// Leaving a StreamGenerativeSearch early: cancelling the call's context cancels the call
// (docs/clients.md#deadlines-leaving-a-stream-closing) and ends the goroutines it used.
// After cancelling, the program waits for a line on stdin (the test has seen the
// upstream LLM request closed). GENSEARCH_ADDRESS, GENSEARCH_API_KEY as in the example;
// GENSEARCH_COLLECTION: a collection with a title.
package main

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"os"
	"runtime"
	"time"

	"gensearch/clients/go/gatewayenv"
	gatewayv1 "gensearch/clients/go/gensearch/gateway/v1"
	retrievalv1 "gensearch/clients/go/gensearch/retrieval/v1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func main() {
	addr, err := gatewayenv.Address()
	check(err)
	conn, err := grpc.Dial(addr, grpc.WithInsecure())
	check(err)
	defer conn.Close()
	base := context.Background()
	if key := gatewayenv.APIKey(); key != "" {
		base = metadata.AppendToOutgoingContext(base, "authorization", "Bearer "+key)
	}
	gateway := gatewayv1.NewGatewayServiceClient(conn)
	request := &gatewayv1.StreamGenerativeSearchRequest{
		Collection: os.Getenv("GENSEARCH_COLLECTION"), Limit: 1,
		Query:    &gatewayv1.StreamGenerativeSearchRequest_Keyword{Keyword: &retrievalv1.Keyword{Text: "desert"}},
		Generate: &gatewayv1.Generate{SinglePrompt: "A slow teaser for {title}", StreamTokens: true},
	}
	// The connection's own goroutines, once it is up: what a left call must come back to.
	_, err = retrievalv1.NewRetrievalServiceClient(conn).ListCollections(base, &retrievalv1.ListCollectionsRequest{})
	check(err)
	baseline := runtime.NumGoroutine()

	ctx, cancel := context.WithCancel(base)
	stream, err := gateway.StreamGenerativeSearch(ctx, request)
	check(err)
	for {
		event, err := stream.Recv()
		check(err)
		if event.GetToken() != nil {
			break // an LLM call is in flight: leave it
		}
	}
	cancel()
	_, err = stream.Recv()
	fmt.Println("left", status.Code(err))
	bufio.NewReader(os.Stdin).ReadString('\n')

	// Polled: the stream's goroutines end soon after the cancel, not at once.
	for end := time.Now().Add(30 * time.Second); runtime.NumGoroutine() > baseline && time.Now().Before(end); {
		time.Sleep(20 * time.Millisecond)
	}
	fmt.Println("goroutines", runtime.NumGoroutine()-baseline)
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
