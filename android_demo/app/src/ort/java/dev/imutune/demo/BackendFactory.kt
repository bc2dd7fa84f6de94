package dev.imutune.demo

import ai.onnxruntime.OnnxTensor
import ai.onnxruntime.OrtEnvironment
import ai.onnxruntime.OrtSession
import android.content.Context
import dev.imutune.core.Backend
import dev.imutune.core.Manifest
import java.nio.FloatBuffer

/** The `ort` flavor: ONNX Runtime (com.microsoft.onnxruntime:onnxruntime-android) runs assets/model.onnx. */
object BackendFactory {
    const val MODEL_FILE = "model.onnx"

    fun create(context: Context, manifest: Manifest, model: String): Backend {
        val bytes = context.assets.open(model).use { it.readBytes() }
        return OrtBackend(bytes, manifest.inputName)
    }
}

class OrtBackend(model: ByteArray, private val inputName: String, threads: Int = 1) : Backend {
    private val env = OrtEnvironment.getEnvironment()
    private val session: OrtSession = env.createSession(
        model, OrtSession.SessionOptions().apply { setIntraOpNumThreads(threads) },
    )

    override fun run(input: FloatArray, shape: LongArray): FloatArray {
        OnnxTensor.createTensor(env, FloatBuffer.wrap(input), shape).use { x ->
            session.run(mapOf(inputName to x)).use { out ->
                @Suppress("UNCHECKED_CAST")
                return (out.get(0).value as Array<FloatArray>)[0]   // (1, K) -> (K)
            }
        }
    }

    override fun name(): String = "onnxruntime"

    override fun close() = session.close()
}
