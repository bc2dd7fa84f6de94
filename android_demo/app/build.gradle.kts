plugins {
    id("com.android.application")
    id("org.jetbrains.kotlin.android")
}

android {
    namespace = "dev.imutune.demo"
    compileSdk = 35

    defaultConfig {
        applicationId = "dev.imutune.demo"
        minSdk = 24
        targetSdk = 35
        versionCode = 1
        versionName = "0.1.0"
    }

    // One flavor per inference runtime: installOrtDebug / installExecutorchDebug.
    flavorDimensions += "backend"
    productFlavors {
        create("ort") {
            dimension = "backend"
            applicationIdSuffix = ".ort"
        }
        create("executorch") {
            dimension = "backend"
            applicationIdSuffix = ".executorch"
        }
    }

    compileOptions {
        sourceCompatibility = JavaVersion.VERSION_17
        targetCompatibility = JavaVersion.VERSION_17
    }
    kotlinOptions {
        jvmTarget = "17"
    }
    androidResources {
        noCompress += listOf("onnx", "pte")   // model assets are read as they are
    }
}

dependencies {
    implementation(project(":core"))
    // onnxruntime is unpinned in pyproject.toml; 1.32.0 is the release installed with the Python package here.
    "ortImplementation"("com.microsoft.onnxruntime:onnxruntime-android:1.32.0")
    // executorch==1.5.1 is pinned in pyproject.toml; the Android AAR of the same release.
    "executorchImplementation"("org.pytorch:executorch-android:1.5.1")
}
