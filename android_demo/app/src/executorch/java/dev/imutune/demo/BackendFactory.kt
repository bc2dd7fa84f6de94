package dev.imutune.demo

import android.content.Context
import dev.imutune.core.Backend
import dev.imutune.core.Manifest
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import java.io.File

/** The `executorch` flavor: ExecuTorch (org.pytorch:executorch-android) runs assets/model.pte (XNNPACK). */
object BackendFactory {
    const val MODEL_FILE = "model.pte"

    fun create(context: Context, manifest: Manifest, model: String): Backend {
        // Module.load takes a file path: copy the (already hash-checked) asset into the app's files once.
        val file = File(context.filesDir, model)
        context.assets.open(model).use { src -> file.outputStream().use { src.copyTo(it) } }
        return ExecuTorchBackend(file.absolutePath)
    }
}

class ExecuTorchBackend(path: String) : Backend {
    private val module: Module = Module.load(path)

    override fun run(input: FloatArray, shape: LongArray): FloatArray {
        val out = module.forward(EValue.from(Tensor.fromBlob(input, shape)))
        return out[0].toTensor().dataAsFloatArray   // (1, K) -> (K)
    }

    override fun name(): String = "executorch"

    override fun close() = module.destroy()
}
