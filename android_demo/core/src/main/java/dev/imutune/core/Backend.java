package dev.imutune.core;

/**
 * A model runtime: ONNX Runtime or ExecuTorch on the phone, a fake in host tests.
 *
 * <p>{@link #run} receives one window laid out as (1, C, T) float32 row-major
 * ({@code input[c * T + t]}) and returns the K logits. The input array is
 * reused between calls: an implementation must not keep a reference to it.
 */
public interface Backend extends AutoCloseable {
    /** Logits (K) of one (1, C, T) window; {@code shape} is {1, C, T}. */
    float[] run(float[] input, long[] shape) throws Exception;

    /** Short name for logs ("onnxruntime", "executorch"...). */
    String name();

    @Override
    void close();
}
