// An S3-compatible object store for the tests: gofakes3 in memory, behind a
// check of every request's AWS Signature Version 4 against one access key,
// so that wrong credentials are refused as S3 refuses them. Optional TLS.
package main

import (
	"context"
	"encoding/xml"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

type s3Error struct {
	XMLName xml.Name `xml:"Error"`
	Code    string   `xml:"Code"`
	Message string   `xml:"Message"`
}

func refuse(w http.ResponseWriter, code, message string) {
	w.Header().Set("Content-Type", "application/xml")
	w.WriteHeader(http.StatusForbidden)
	_ = xml.NewEncoder(w).Encode(s3Error{Code: code, Message: message})
}

// authorization splits `AWS4-HMAC-SHA256 Credential=AK/date/region/s3/aws4_request,
// SignedHeaders=a;b, Signature=hex` into its parts.
func authorization(header string) (accessKey, region string, signed []string, signature string, ok bool) {
	rest, found := strings.CutPrefix(header, "AWS4-HMAC-SHA256 ")
	if !found {
		return "", "", nil, "", false
	}
	for _, part := range strings.Split(rest, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "Credential":
			scope := strings.Split(v, "/")
			if len(scope) != 5 {
				return "", "", nil, "", false
			}
			accessKey, region = scope[0], scope[2]
		case "SignedHeaders":
			signed = strings.Split(v, ";")
		case "Signature":
			signature = v
		}
	}
	return accessKey, region, signed, signature, accessKey != "" && signature != ""
}

// verified signs a copy of the request holding only the signed headers with
// the known secret and compares the signatures.
func verified(r *http.Request, creds aws.Credentials) (string, string) {
	accessKey, region, signed, signature, ok := authorization(r.Header.Get("Authorization"))
	if !ok {
		return "AccessDenied", "a request signed with AWS Signature Version 4 is required"
	}
	if accessKey != creds.AccessKeyID {
		return "InvalidAccessKeyId", "the access key ID does not exist"
	}
	at, err := time.Parse("20060102T150405Z", r.Header.Get("X-Amz-Date"))
	if err != nil {
		return "AccessDenied", "X-Amz-Date is missing or malformed"
	}
	copied, _ := http.NewRequest(r.Method, r.URL.String(), nil)
	copied.URL = r.URL
	copied.Host = r.Host
	for _, name := range signed {
		switch name {
		case "host":
		case "content-length":
			copied.ContentLength = r.ContentLength
		default:
			copied.Header[http.CanonicalHeaderKey(name)] = r.Header.Values(name)
		}
	}
	copied.Header.Del("Authorization")
	payload := r.Header.Get("X-Amz-Content-Sha256")
	signer := v4.NewSigner(func(o *v4.SignerOptions) { o.DisableURIPathEscaping = true })
	if err := signer.SignHTTP(context.Background(), creds, copied, payload, "s3", region, at); err != nil {
		return "AccessDenied", err.Error()
	}
	_, _, _, expected, _ := authorization(copied.Header.Get("Authorization"))
	if expected != signature {
		return "SignatureDoesNotMatch", "the request signature we calculated does not match the signature you provided"
	}
	return "", ""
}

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	accessKey := flag.String("access-key", "", "the one access key ID accepted")
	secretKey := flag.String("secret-key", "", "its secret access key")
	bucket := flag.String("bucket", "", "a bucket created at start")
	certFile := flag.String("tls-cert", "", "serve HTTPS with this certificate (PEM)")
	keyFile := flag.String("tls-key", "", "and this key (PEM)")
	flag.Parse()
	if *accessKey == "" || *secretKey == "" {
		log.Fatal("-access-key and -secret-key are required")
	}
	backend := s3mem.New()
	if *bucket != "" {
		if err := backend.CreateBucket(*bucket); err != nil {
			log.Fatal(err)
		}
	}
	faker := gofakes3.New(backend, gofakes3.WithLogger(gofakes3.DiscardLog()))
	store := faker.Server()
	creds := aws.Credentials{AccessKeyID: *accessKey, SecretAccessKey: *secretKey}
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if code, message := verified(r, creds); code != "" {
			log.Printf("refused %s %s: %s", r.Method, r.URL.Path, code)
			refuse(w, code, message)
			return
		}
		store.ServeHTTP(w, r)
	})
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	// The address goes to stdout first, for whoever started the store.
	fmt.Println(listener.Addr().String())
	server := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second}
	if *certFile != "" {
		log.Fatal(server.ServeTLS(listener, *certFile, *keyFile))
	}
	log.Fatal(server.Serve(listener))
}
