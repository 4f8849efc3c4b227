# syntax=docker/dockerfile:1

# Base images as build arguments, for mirrors and private registries
# (hack/images.sh builds the same image with no registry at all).
ARG BUILD_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

# Build stage: the official Rust image. The whole workspace is copied (the
# root package and the emulator member crate share one Cargo.lock).
FROM ${BUILD_IMAGE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin whatsapp-operator \
 && install -D -m 0755 target/release/whatsapp-operator /out/whatsapp-operator

# Runtime stage: distroless with glibc and libgcc, no shell, non-root user.
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="whatsapp-operator" \
      org.opencontainers.image.description="Kubernetes operator for the WhatsApp Business API on-premises client" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/whatsapp-operator /whatsapp-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/whatsapp-operator"]
