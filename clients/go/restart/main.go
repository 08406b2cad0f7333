// The gateway dies mid-stream and comes back (tests/clients/test_gateway_restart.py kills
// and restarts it): the stream fails at once with Unavailable, so does a call while it is
// down, and the same connection works once it is back; src/restart.ts in Go, printing the
// same lines. After "down" the program waits for a line on stdin (the gateway is back).
// GENSEARCH_ADDRESS, GENSEARCH_API_KEY as in the example.
package main

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"os"
	"strconv"
	"time"

	"gensearch/clients/go/gatewayenv"
	generationv1 "gensearch/clients/go/gensearch/generation/v1"
	"gensearch/clients/go/rpcerror"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func say(content string) []*generationv1.Message {
	return []*generationv1.Message{{Role: generationv1.Role_ROLE_USER, Content: content}}
}

func failure(err error) string {
	if e, ok := rpcerror.From(err); ok {
		return fmt.Sprintf("%s %s", e.Code, e.Reason)
	}
	return "none"
}

func main() {
	addr, err := gatewayenv.Address()
	check(err)
	conn, err := grpc.Dial(addr, grpc.WithInsecure())
	check(err)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if key := gatewayenv.APIKey(); key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}
	generation := generationv1.NewGenerationServiceClient(conn)

	stream, err := generation.StreamGenerate(ctx, &generationv1.StreamGenerateRequest{Messages: say("streamed while the gateway dies")})
	check(err)
	for deltas := 0; ; deltas++ {
		if _, err = stream.Recv(); err != nil {
			break
		}
		if deltas == 0 {
			fmt.Println("streaming") // the test kills the gateway now
		}
	}
	fmt.Println("died", failure(err))
	_, err = generation.Generate(ctx, &generationv1.GenerateRequest{Messages: say("while down")})
	fmt.Println("down", failure(err))
	bufio.NewReader(os.Stdin).ReadString('\n')

	// The same connection: Unavailable only while it reconnects (gRPC's backoff).
	for attempt := 1; ; attempt++ {
		reply, err := generation.Generate(ctx, &generationv1.GenerateRequest{Messages: say("after the restart")})
		if err == nil {
			fmt.Println("back", strconv.Quote(reply.Text))
			return
		}
		if status.Code(err) != codes.Unavailable || attempt == 300 {
			log.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
