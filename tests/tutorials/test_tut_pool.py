"""Tutorial examples that use Pool or ProcessPoolExecutor, ported to fastmp.

Each example runs as written in a fresh interpreter (tests/_script.py), with
the import swapped to fastmp (``import fastmp as multiprocessing``, ``from
fastmp import ...``, ``fastmp.ProcessPoolExecutor`` for the
concurrent.futures examples), sleeps scaled down, printed text in English,
and the fixes ../shared/API_INVENTORY.md lists for the examples' own bugs.
IDs are those of API_INVENTORY.md. Each runs under fork and spawn.
"""

from __future__ import annotations

import ast
import math
import re

import pytest

from _script import run_script

pytestmark = pytest.mark.timeout(120)

METHODS = ["fork", "spawn"]


def run(code: str, tmp_path, method: str, timeout: float = 90, expect_rc: int = 0) -> str:
    # The start method is forced at the top, so the example's own code runs unchanged.
    prologue = f"import fastmp as _fastmp\n_fastmp.set_start_method({method!r}, force=True)\n"
    import textwrap

    out = run_script(prologue + textwrap.dedent(code), tmp_path, timeout=timeout)
    assert out.returncode == expect_rc, (
        f"rc={out.returncode}\nstdout:\n{out.stdout}\nstderr:\n{out.stderr}"
    )
    return out.stdout


def lines_with(out: str, prefix: str) -> list[str]:
    return [line[len(prefix) :].strip() for line in out.splitlines() if line.startswith(prefix)]


@pytest.fixture(params=METHODS)
def method(request):
    return request.param


# --- 000-1: ProcessManager (B1: import queue; B2: the worker calls the task
# itself instead of the parent's Pool; B3: JoinableQueue for task_done) ---

PROCESS_MANAGER = """
import fastmp as multiprocessing
from fastmp import Process, JoinableQueue as Queue, Queue as ResultQueue, Pool
import queue
import time
from typing import List, Dict, Any, Callable, Optional
import sys
import os

class ProcessManager:
    def __init__(self, num_processes: int = None):
        self.num_processes = num_processes or os.cpu_count() or 1
        self.processes: List[Process] = []
        self.task_queue = Queue()
        self.result_queue = ResultQueue()
        self.is_running = False
        self.results: Dict[str, Any] = {}
        self.pool = Pool(processes=self.num_processes)

    def start(self):
        self.is_running = True
        self._start_worker_processes()

    def stop(self):
        self.is_running = False
        for _ in range(len(self.processes)):
            self.task_queue.put(None)
        for process in self.processes:
            process.join()
        self.pool.close()
        self.pool.join()

    def _start_worker_processes(self):
        for _ in range(self.num_processes):
            process = Process(target=self._worker_loop)
            process.daemon = True
            process.start()
            self.processes.append(process)

    def submit_task(self, task_id: str, func: Callable, *args, **kwargs):
        self.task_queue.put((task_id, func, args, kwargs))

    def _worker_loop(self):
        while self.is_running:
            try:
                task = self.task_queue.get(timeout=1)
                if task is None:
                    break
                task_id, func, args, kwargs = task
                try:
                    result = RUN_TASK
                    self.result_queue.put((task_id, result, None))
                except Exception as e:
                    self.result_queue.put((task_id, None, e))
                finally:
                    self.task_queue.task_done()
            except queue.Empty:
                continue

    def get_result(self, task_id: str, timeout: float = None) -> Any:
        while True:
            try:
                result_task_id, result, error = self.result_queue.get(timeout=timeout)
                if result_task_id == task_id:
                    if error:
                        raise error
                    return result
                else:
                    self.result_queue.put((result_task_id, result, error))
            except queue.Empty:
                raise TimeoutError(f"Timeout waiting for task {task_id}")

    def map_tasks(self, func: Callable, items: List[Any], **kwargs) -> List[Any]:
        return self.pool.map(func, items)

    def batch_process(self, func: Callable, items: List[Any], batch_size: int = 10, **kwargs) -> List[Any]:
        results = []
        for i in range(0, len(items), batch_size):
            batch = items[i:i + batch_size]
            batch_results = self.map_tasks(func, batch, **kwargs)
            results.extend(batch_results)
        return results

    def starmap_tasks(self, func: Callable, items: List[tuple], **kwargs) -> List[Any]:
        return self.pool.starmap(func, items)

def process_item(item: int) -> int:
    time.sleep(0.01)
    return item * item

def process_items(item1: int, item2: int) -> int:
    time.sleep(0.01)
    return item1 + item2

def main():
    manager = ProcessManager(num_processes=4)
    try:
        manager.start()
        print("Submitting single task:")
        manager.submit_task("task1", process_item, 5)
        result = manager.get_result("task1")
        print(f"Result: {result}")
        items = list(range(10))
        results = manager.map_tasks(process_item, items)
        print(f"Results: {results}")
        items = list(range(20))
        results = manager.batch_process(process_item, items, batch_size=5)
        print(f"Results: {results}")
        items = [(i, i+1) for i in range(5)]
        results = manager.starmap_tasks(process_items, items)
        print(f"Results: {results}")
    finally:
        manager.stop()

if __name__ == '__main__':
    main()
"""


def test_000_1_process_manager(tmp_path):
    # fork only: the manager passes itself (with its Pool) to its worker
    # Processes; under spawn that raises NotImplementedError, as the stdlib (B2).
    code = PROCESS_MANAGER.replace("RUN_TASK", "func(*args, **kwargs)")
    out = run(code, tmp_path, "fork")
    assert "Result: 25" in out
    results = [ast.literal_eval(x) for x in lines_with(out, "Results:")]
    assert results == [
        [i * i for i in range(10)],
        [i * i for i in range(20)],
        [2 * i + 1 for i in range(5)],
    ]


def test_000_1_pool_used_in_child_errors_instead_of_hanging(tmp_path):
    """As written (B2): the workers call the parent's pool.apply. The stdlib
    hangs forever; fastmp's worker gets NotImplementedError, which the example
    forwards to get_result, so the script fails fast with a clear message."""
    code = PROCESS_MANAGER.replace("RUN_TASK", "self.pool.apply(func, args=args, kwds=kwargs)")
    out = run_script(
        "import fastmp as _f\n_f.set_start_method('fork', force=True)\n" + code,
        tmp_path,
        timeout=60,
    )
    assert out.returncode == 1
    assert "NotImplementedError: this Pool was created by process" in out.stderr


# --- 001-5, 001-6 (B5: the missing imports and process_task prepended) ---


def test_001_5_basic_pool(tmp_path, method):
    out = run(
        """
        import fastmp as multiprocessing, os, time
        from fastmp import Pool
        import random

        def process_task(task_id):
            print(f"start task {task_id}")
            time.sleep(random.random() * 0.2)
            return f"Task {task_id} result"

        if __name__ == '__main__':
            with Pool(processes=4) as pool:
                results = pool.map(process_task, range(10))
                for result in results:
                    print(f"got: {result}")
        """,
        tmp_path,
        method,
    )
    assert lines_with(out, "got:") == [f"Task {i} result" for i in range(10)]
    # Workers' prints may interleave mid-line (several processes, one pipe).
    assert sorted(int(x) for x in re.findall(r"start task (\d+)", out)) == list(range(10))


def test_001_6_imap_unordered_with_tqdm(tmp_path, method):
    pytest.importorskip("tqdm")
    out = run(
        """
        import fastmp as multiprocessing, os, time, random
        from fastmp import Pool
        from tqdm import tqdm

        def process_task(task_id):
            time.sleep(random.random() * 0.2)
            return f"Task {task_id} result"

        def async_process_task(tasks):
            with Pool(processes=4) as pool:
                results = []
                with tqdm(total=len(tasks)) as pbar:
                    for result in pool.imap_unordered(process_task, tasks):
                        results.append(result)
                        pbar.update(1)
                return results

        if __name__ == '__main__':
            tasks = range(10)
            results = async_process_task(tasks)
            print(sorted(results, key=lambda r: int(r.split()[1])))
            print("all tasks done!")
        """,
        tmp_path,
        method,
    )
    assert "all tasks done!" in out
    assert ast.literal_eval(out.splitlines()[0]) == [f"Task {i} result" for i in range(10)]


# --- 001-9 and 004-8.2 (Pillow, on images the test generates) ---

IMAGE_PROCESSOR = """
from PIL import Image
import os
from fastmp import Pool

class ImageProcessor:
    def __init__(self, input_dir, output_dir):
        self.input_dir = input_dir
        self.output_dir = output_dir
        os.makedirs(output_dir, exist_ok=True)

    def process_image(self, filename):
        try:
            input_path = os.path.join(self.input_dir, filename)
            output_path = os.path.join(self.output_dir, filename)
            with Image.open(input_path) as img:
                resized = img.resize((800, 600))
                enhanced = resized.point(lambda p: p * 1.2)
                enhanced.save(output_path)
            return f"processed: {filename}"
        except Exception as e:
            return f"failed {filename}: {str(e)}"

    def batch_process(self):
        filenames = [f for f in os.listdir(self.input_dir)
                    if f.endswith(('.jpg', '.png'))]
        with Pool(processes=4) as pool:
            results = pool.map(self.process_image, filenames)
        return results

if __name__ == '__main__':
    processor = ImageProcessor('input_images', 'output_images')
    results = processor.batch_process()
    for result in results:
        print(result)
"""


def test_001_9_image_processor(tmp_path, method):
    image = pytest.importorskip("PIL.Image")
    (tmp_path / "input_images").mkdir()
    for i in range(6):
        ext = "png" if i % 2 else "jpg"
        image.new("RGB", (64 + i, 48), (40 * i, 100, 150)).save(
            tmp_path / "input_images" / f"img{i}.{ext}"
        )
    (tmp_path / "input_images" / "notes.txt").write_text("not an image")
    out = run(IMAGE_PROCESSOR, tmp_path, method)
    assert sorted(lines_with(out, "processed:")) == sorted(
        f"img{i}.{'png' if i % 2 else 'jpg'}" for i in range(6)
    )
    for i in range(6):
        with image.open(tmp_path / "output_images" / f"img{i}.{'png' if i % 2 else 'jpg'}") as img:
            assert img.size == (800, 600)
    with image.open(tmp_path / "output_images" / "img1.png") as img:
        assert img.getpixel((10, 10)) == (48, 120, 180)  # brightened by 1.2


def test_004_8_2_parallel_image_processing(tmp_path, method):
    image = pytest.importorskip("PIL.Image")
    src = image.new("RGB", (40, 30))
    for x in range(40):
        for y in range(30):
            src.putpixel((x, y), (x * 6, y * 8, 100))
    src.save(tmp_path / "input.png")
    out = run(
        """
        import fastmp as multiprocessing
        from PIL import Image
        import os

        def process_image_chunk(args):
            chunk, operation, params = args
            result_chunk = chunk.copy()
            if operation == "grayscale":
                for x in range(chunk.width):
                    for y in range(chunk.height):
                        r, g, b = chunk.getpixel((x, y))
                        gray = int(0.299 * r + 0.587 * g + 0.114 * b)
                        result_chunk.putpixel((x, y), (gray, gray, gray))
            elif operation == "invert":
                for x in range(chunk.width):
                    for y in range(chunk.height):
                        r, g, b = chunk.getpixel((x, y))
                        result_chunk.putpixel((x, y), (255 - r, 255 - g, 255 - b))
            return result_chunk

        def parallel_image_processing(image_path, operation, num_processes=4):
            image = Image.open(image_path)
            width, height = image.size
            chunk_height = height // num_processes
            chunks = []
            for i in range(num_processes):
                top = i * chunk_height
                bottom = (i + 1) * chunk_height if i < num_processes - 1 else height
                chunk = image.crop((0, top, width, bottom))
                chunks.append((chunk, operation, {}))
            with multiprocessing.Pool(num_processes) as pool:
                processed_chunks = pool.map(process_image_chunk, chunks)
            result_image = Image.new('RGB', (width, height))
            current_height = 0
            for chunk in processed_chunks:
                result_image.paste(chunk, (0, current_height))
                current_height += chunk.height
            return result_image

        if __name__ == "__main__":
            input_image = "input.png"
            output_image = "output.png"
            if os.path.exists(input_image):
                processed = parallel_image_processing(input_image, "grayscale", 4)
                processed.save(output_image)
                print(f"Image processed and saved to {output_image}")
            else:
                print(f"Input image {input_image} not found")
        """,
        tmp_path,
        method,
    )
    assert "Image processed and saved to output.png" in out
    with image.open(tmp_path / "output.png") as result:
        assert result.size == (40, 30)
        for x, y in [(0, 0), (13, 7), (39, 29), (20, 15)]:
            r, g, b = src.getpixel((x, y))
            gray = int(0.299 * r + 0.587 * g + 0.114 * b)
            assert result.getpixel((x, y)) == (gray, gray, gray)


# --- 001-10 (pandas on a generated CSV; chunks built by row position, see below) ---


def test_001_10_data_analyzer(tmp_path, method):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("numpy")
    df = pd.DataFrame(
        {"a": [float(i) for i in range(100)], "b": [float(i % 7) for i in range(100)]}
    )
    df.to_csv(tmp_path / "large_dataset.csv", index=False)
    out = run(
        """
        import pandas as pd
        import numpy as np
        from fastmp import Pool

        class DataAnalyzer:
            def __init__(self, data_file):
                self.data = pd.read_csv(data_file)
                # Port fix: with numpy 2 / pandas 3, np.array_split(DataFrame)
                # returns bare arrays; split the row positions instead.
                self.chunks = [self.data.iloc[rows] for rows in np.array_split(np.arange(len(self.data)), 4)]

            def analyze_chunk(self, chunk):
                results = {
                    'mean': chunk.mean(),
                    'std': chunk.std(),
                    'min': chunk.min(),
                    'max': chunk.max()
                }
                return results

            def parallel_analyze(self):
                with Pool(processes=4) as pool:
                    chunk_results = pool.map(self.analyze_chunk, self.chunks)
                final_results = {}
                for key in ['mean', 'std', 'min', 'max']:
                    values = [result[key] for result in chunk_results]
                    final_results[key] = pd.concat(values)
                return final_results

        if __name__ == '__main__':
            analyzer = DataAnalyzer('large_dataset.csv')
            results = analyzer.parallel_analyze()
            print("results:")
            for key, value in results.items():
                print(f"{key.upper()}: {list(value.round(3).items())}")
        """,
        tmp_path,
        method,
    )
    mins = ast.literal_eval(lines_with(out, "MIN:")[0])
    maxs = ast.literal_eval(lines_with(out, "MAX:")[0])
    means = ast.literal_eval(lines_with(out, "MEAN:")[0])
    assert [v for k, v in mins if k == "a"] == [0.0, 25.0, 50.0, 75.0]
    assert [v for k, v in maxs if k == "a"] == [24.0, 49.0, 74.0, 99.0]
    assert [v for k, v in means if k == "a"] == [12.0, 37.0, 62.0, 87.0]


# --- 002-§4, §5, §7 (nested functions work with fastmp: B9, B10 need no fix) ---

TUT_002_HEADER = """
import fastmp as mp
import os
import time
from fastmp import ProcessPoolExecutor
from concurrent.futures import as_completed

def cpu_bound_task(n):
    total = 0
    for i in range(n):
        total += i * i
    return total
"""


def test_002_4_process_pool(tmp_path, method):
    out = run(
        TUT_002_HEADER
        + """
def main04_process_pool():
    print("--- multiprocessing.Pool ---")

    def square(x):
        return x * x

    with mp.Pool(processes=4) as pool:
        results = pool.map(square, range(10))
        print(f"map: {results}")
        result = pool.apply(square, (5,))
        print(f"apply: {result}")
        async_result = pool.map_async(square, range(5))
        print(f"map_async: {async_result.get()}")

    print("--- ProcessPoolExecutor ---")
    with ProcessPoolExecutor(max_workers=4) as executor:
        results = list(executor.map(square, range(10)))
        print(f"executor map: {results}")
        futures = [executor.submit(square, i) for i in range(5)]
        for future in as_completed(futures):
            print(f"  done: {future.result()}")

if __name__ == "__main__":
    main04_process_pool()
""",
        tmp_path,
        method,
    )
    squares = [i * i for i in range(10)]
    assert ast.literal_eval(lines_with(out, "map:")[0]) == squares
    assert lines_with(out, "apply:") == ["25"]
    assert ast.literal_eval(lines_with(out, "map_async:")[0]) == squares[:5]
    assert ast.literal_eval(lines_with(out, "executor map:")[0]) == squares
    assert sorted(int(x) for x in lines_with(out, "  done:")) == squares[:5]


def test_002_5_cpu_bound_comparison(tmp_path, method):
    out = run(
        TUT_002_HEADER
        + """
def main05_cpu_bound_comparison():
    n = 100000
    tasks = [n] * 4
    start = time.perf_counter()
    results = [cpu_bound_task(t) for t in tasks]
    serial_time = time.perf_counter() - start
    print(f"serial: {results}")
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=4) as executor:
        presults = list(executor.map(cpu_bound_task, tasks))
    parallel_time = time.perf_counter() - start
    print(f"parallel: {presults}")
    print(f"  speed-up: {serial_time / parallel_time:.2f}x")

if __name__ == "__main__":
    main05_cpu_bound_comparison()
""",
        tmp_path,
        method,
    )
    expected = [sum(i * i for i in range(100000))] * 4
    assert ast.literal_eval(lines_with(out, "serial:")[0]) == expected
    assert ast.literal_eval(lines_with(out, "parallel:")[0]) == expected
    assert "speed-up:" in out


def test_002_7_practical_example(tmp_path, method):
    out = run(
        TUT_002_HEADER
        + """
def main07_practical_example():
    def process_image(image_path):
        time.sleep(0.02)
        return f"processed: {image_path}"

    images = [f"image_{i}.jpg" for i in range(8)]
    results = [process_image(img) for img in images]
    with ProcessPoolExecutor(max_workers=4) as executor:
        results = list(executor.map(process_image, images))
    for r in results:
        print(f"  {r}")

if __name__ == "__main__":
    main07_practical_example()
""",
        tmp_path,
        method,
    )
    assert lines_with(out, "  processed:") == [f"image_{i}.jpg" for i in range(8)]


# --- 003-5.4.3, 003-7.1.x ---


def test_003_5_4_3_cross_platform(tmp_path, method):
    out = run(
        """
        import fastmp as multiprocessing
        import os
        import platform

        def cross_platform_task(data):
            system = platform.system()
            pid = os.getpid()
            print(f"system: {system}, pid: {pid}, data: {data}")
            return data * 2

        def get_process_count():
            cpu_count = multiprocessing.cpu_count()
            system = platform.system()
            if system == "Windows":
                return min(4, cpu_count)
            else:
                return cpu_count

        def cross_platform_demo():
            print(f"system: {platform.system()}")
            print(f"cpus: {multiprocessing.cpu_count()}")
            process_count = get_process_count()
            print(f"processes: {process_count}")
            data_list = list(range(1, 11))
            with multiprocessing.Pool(process_count) as pool:
                results = pool.map(cross_platform_task, data_list)
            print(f"results: {results}")

        if __name__ == '__main__':
            cross_platform_demo()
        """,
        tmp_path,
        method,
    )
    import os

    assert lines_with(out, "processes:") == [str(os.cpu_count())]
    assert ast.literal_eval(lines_with(out, "results:")[0]) == [2 * i for i in range(1, 11)]
    assert len(re.findall(r"system: Linux, pid: \d+, data: \d+", out)) == 10


def test_003_7_1_1_basic_pool(tmp_path, method):
    out = run(
        """
        from fastmp import Pool
        import os
        import time
        import random

        def cpu_intensive_task(task_data):
            task_id, numbers = task_data
            worker_pid = os.getpid()
            print(f"{task_id} start - worker {worker_pid}")
            result = 0
            for num in numbers:
                result += sum(i*i for i in range(num))
            time.sleep(random.uniform(0.05, 0.2))
            return task_id, result, worker_pid

        def basic_pool_demo():
            print(f"main pid: {os.getpid()}")
            tasks = []
            for i in range(8):
                numbers = [random.randint(50, 200) for _ in range(3)]
                tasks.append((f"Task-{i+1}", numbers))
            with Pool(processes=4) as pool:
                start_time = time.time()
                results = pool.map(cpu_intensive_task, tasks)
                end_time = time.time()
            print(f"total: {end_time - start_time:.2f}s")
            for (task_id, numbers), (rid, result, worker_pid) in zip(tasks, results):
                expected = sum(sum(i*i for i in range(n)) for n in numbers)
                print(f"check: {task_id == rid and result == expected} {worker_pid != os.getpid()}")

        if __name__ == '__main__':
            basic_pool_demo()
        """,
        tmp_path,
        method,
    )
    assert lines_with(out, "check:") == ["True True"] * 8


def test_003_7_1_2_pool_methods(tmp_path, method):
    out = run(
        """
        from fastmp import Pool, current_process
        import time
        import os

        def sample_task(x):
            process = current_process()
            print(f"Processing {x} in {process.name} (PID: {os.getpid()})")
            time.sleep(0.05)
            return x * x

        def callback_success(result):
            print(f"Task completed successfully: {result}")

        def callback_error(error):
            print(f"Task failed with error: {error}")

        def pool_methods_demo():
            with Pool(processes=3) as pool:
                data = [1, 2, 3, 4, 5]
                results = pool.map(sample_task, data)
                print(f"Map: {results}")
                async_result = pool.map_async(sample_task, data)
                results = async_result.get(timeout=10)
                print(f"Map_async: {results}")
                result = pool.apply(sample_task, (10,))
                print(f"Apply: {result}")
                async_results = []
                for i in range(3):
                    ar = pool.apply_async(sample_task, (i + 20,),
                                          callback=callback_success, error_callback=callback_error)
                    async_results.append(ar)
                final_results = [ar.get() for ar in async_results]
                print(f"Apply_async: {final_results}")
                for i, result in enumerate(pool.imap(sample_task, [30, 31, 32])):
                    print(f"Imap {i+1}: {result}")

        if __name__ == '__main__':
            pool_methods_demo()
        """,
        tmp_path,
        method,
    )
    assert ast.literal_eval(lines_with(out, "Map:")[0]) == [1, 4, 9, 16, 25]
    assert ast.literal_eval(lines_with(out, "Map_async:")[0]) == [1, 4, 9, 16, 25]
    assert lines_with(out, "Apply:") == ["100"]
    assert ast.literal_eval(lines_with(out, "Apply_async:")[0]) == [400, 441, 484]
    assert sorted(lines_with(out, "Task completed successfully:")) == ["400", "441", "484"]
    assert [line.split(": ")[1] for line in out.splitlines() if line.startswith("Imap")] == [
        "900",
        "961",
        "1024",
    ]
    prefix = "ForkPoolWorker-" if method == "fork" else "SpawnPoolWorker-"
    names = re.findall(r"Processing \d+ in (\S+) ", out)
    assert len(names) == 5 + 5 + 1 + 3 + 3 and all(n.startswith(prefix) for n in names)


@pytest.mark.parametrize("variant", ["pool-faster", "process-faster"])
def test_003_7_1_3_pool_vs_processes(tmp_path, method, variant):
    batches, work = (10, 10_000) if variant == "pool-faster" else (1, 100_000)
    out = run(
        f"""
        from fastmp import Process, Pool
        import time

        def task(x):
            return sum(i*i for i in range({work}))

        def run_processes():
            for _ in range({batches}):
                ps = []
                for i in range(10):
                    p = Process(target=task, args=(i,))
                    ps.append(p)
                    p.start()
                for p in ps:
                    p.join()
                    assert p.exitcode == 0

        def run_pool():
            with Pool(10) as pool:
                for _ in range({batches}):
                    assert pool.map(task, range(10)) == [task(0)] * 10

        if __name__ == '__main__':
            t1 = time.time(); run_processes(); print("Process:", time.time()-t1)
            t2 = time.time(); run_pool(); print("Pool:", time.time()-t2)
        """,
        tmp_path,
        method,
    )
    assert len(lines_with(out, "Process:")) == 1 and len(lines_with(out, "Pool:")) == 1


# --- 004 ---


def test_004_3_3_process_pool(tmp_path, method):
    out = run(
        """
        import fastmp as multiprocessing
        import time

        def square(x):
            time.sleep(0.02)
            return x * x

        if __name__ == "__main__":
            with multiprocessing.Pool() as pool:
                result = pool.apply(square, (5,))
                print(f"apply result: {result}")
                async_result = pool.apply_async(square, (10,))
                print(f"apply_async result: {async_result.get()}")
                numbers = list(range(1, 11))
                results = pool.map(square, numbers)
                print(f"map results: {results}")
                async_results = pool.map_async(square, numbers)
                print(f"map_async results: {async_results.get()}")
                for result in pool.imap_unordered(square, numbers):
                    print(f"imap_unordered: {result}")
        """,
        tmp_path,
        method,
    )
    squares = [i * i for i in range(1, 11)]
    assert lines_with(out, "apply result:") == ["25"]
    assert lines_with(out, "apply_async result:") == ["100"]
    assert ast.literal_eval(lines_with(out, "map results:")[0]) == squares
    assert ast.literal_eval(lines_with(out, "map_async results:")[0]) == squares
    assert sorted(int(x) for x in lines_with(out, "imap_unordered:")) == squares


def test_004_3_4_process_pool_executor(tmp_path, method):
    out = run(
        """
        import concurrent.futures
        import fastmp
        import time

        def task(n):
            time.sleep(0.05)
            return n * n

        if __name__ == "__main__":
            with fastmp.ProcessPoolExecutor(max_workers=4) as executor:
                future = executor.submit(task, 10)
                print(f"Future result: {future.result()}")
                futures = [executor.submit(task, i) for i in range(5)]
                for future in concurrent.futures.as_completed(futures):
                    print(f"Completed: {future.result()}")
                results = list(executor.map(task, range(1, 6)))
                print(f"Map results: {results}")
        """,
        tmp_path,
        method,
    )
    assert lines_with(out, "Future result:") == ["100"]
    assert sorted(int(x) for x in lines_with(out, "Completed:")) == [0, 1, 4, 9, 16]
    assert ast.literal_eval(lines_with(out, "Map results:")[0]) == [1, 4, 9, 16, 25]


def test_004_6_1_pool_size(tmp_path, method):
    # Scaled down: n * 1000 iterations instead of n * 1_000_000.
    out = run(
        """
        import fastmp as multiprocessing
        import os

        def cpu_intensive_task(n):
            result = 0
            for i in range(n * 1000):
                result += i % 256
            return result, os.getpid()

        if __name__ == "__main__":
            cpu_count = multiprocessing.cpu_count()
            print(f"CPU cores: {cpu_count}")
            pool_size = cpu_count
            with multiprocessing.Pool(pool_size) as pool:
                tasks = [100, 200, 300, 400, 500]
                results = pool.map(cpu_intensive_task, tasks)
                for result, pid in results:
                    print(f"Result: {result}, PID: {pid}")
        """,
        tmp_path,
        method,
    )
    expected = [sum(i % 256 for i in range(n * 1000)) for n in [100, 200, 300, 400, 500]]
    assert [int(line.split(",")[0]) for line in lines_with(out, "Result:")] == expected


def test_004_6_2_exceptions(tmp_path, method):
    out = run(
        """
        import fastmp as multiprocessing
        import traceback

        def task_with_exception(x):
            if x == 3:
                raise ValueError(f"Invalid value: {x}")
            return x * x

        if __name__ == "__main__":
            with multiprocessing.Pool(2) as pool:
                try:
                    result = pool.apply(task_with_exception, (3,))
                except Exception as e:
                    print(f"Caught exception: {e}")
                numbers = [1, 2, 3, 4, 5]
                async_results = []
                for n in numbers:
                    async_result = pool.apply_async(task_with_exception, (n,))
                    async_results.append(async_result)
                for i, async_result in enumerate(async_results):
                    try:
                        result = async_result.get()
                        print(f"Task {i} succeeded: {result}")
                    except Exception as e:
                        print(f"Task {i} failed: {e}")
                        traceback.print_exc()
        """,
        tmp_path,
        method,
    )
    assert "Caught exception: Invalid value: 3" in out
    assert [line for line in out.splitlines() if line.startswith("Task")] == [
        "Task 0 succeeded: 1",
        "Task 1 succeeded: 4",
        "Task 2 failed: Invalid value: 3",
        "Task 3 succeeded: 16",
        "Task 4 succeeded: 25",
    ]


def test_004_6_2_traceback_shows_remote_frame(tmp_path):
    out = run_script(
        """
        import fastmp as multiprocessing, traceback

        def task_with_exception(x):
            raise ValueError(f"Invalid value: {x}")

        if __name__ == "__main__":
            with multiprocessing.Pool(2) as pool:
                try:
                    pool.apply(task_with_exception, (3,))
                except Exception:
                    traceback.print_exc()
        """,
        tmp_path,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert 'raise ValueError(f"Invalid value: {x}")' in out.stderr
    assert "The above exception was the direct cause of the following exception" in out.stderr


def test_004_6_3_callbacks(tmp_path, method):
    out = run(
        """
        import fastmp as multiprocessing
        import time

        def process_task(n):
            time.sleep(0.05)
            return n * n

        def callback_success(result):
            print(f"Task succeeded with result: {result}")

        def callback_error(error):
            print(f"Task failed with error: {error}")

        if __name__ == "__main__":
            with multiprocessing.Pool(2) as pool:
                for i in range(5):
                    pool.apply_async(process_task, args=(i,),
                                     callback=callback_success, error_callback=callback_error)
                pool.close()
                pool.join()
        """,
        tmp_path,
        method,
    )
    assert sorted(int(x) for x in lines_with(out, "Task succeeded with result:")) == [
        0,
        1,
        4,
        9,
        16,
    ]


def test_004_6_4_initializer(tmp_path, method):
    out = run(
        """
        import fastmp as multiprocessing
        import time

        process_local_data = None

        def init_process():
            global process_local_data
            process_local_data = {
                'pid': multiprocessing.current_process().pid,
                'start_time': time.time()
            }
            print(f"Process {process_local_data['pid']} initialized")

        def worker_task(x):
            global process_local_data
            time.sleep(0.01)
            return x * x, process_local_data['pid']

        if __name__ == "__main__":
            with multiprocessing.Pool(initializer=init_process, initargs=()) as pool:
                results = pool.map(worker_task, range(10))
                for result, pid in results:
                    print(f"Result: {result}, PID: {pid}")
        """,
        tmp_path,
        method,
    )
    # Every task read the dict its worker's initializer built (else TypeError).
    assert re.search(r"Process \d+ initialized", out)
    results = [
        tuple(int(v.split(": ")[1]) for v in line.split(", "))
        for line in lines_with(out, "")
        if line.startswith("Result:")
    ]
    assert [r for r, _ in results] == [i * i for i in range(10)]
    assert all(pid > 0 for _, pid in results)


def test_004_8_1_monte_carlo_pi(tmp_path, method):
    out = run(
        """
        import fastmp as multiprocessing
        import random
        import math

        def calculate_pi_part(samples):
            inside = 0
            for _ in range(samples):
                x = random.random()
                y = random.random()
                if x*x + y*y <= 1.0:
                    inside += 1
            return inside

        def parallel_pi(total_samples, num_processes):
            samples_per_process = total_samples // num_processes
            with multiprocessing.Pool(num_processes) as pool:
                results = pool.map(calculate_pi_part, [samples_per_process] * num_processes)
            total_inside = sum(results)
            return 4.0 * total_inside / total_samples

        if __name__ == "__main__":
            total_samples = 200000
            num_processes = multiprocessing.cpu_count()
            pi_estimate = parallel_pi(total_samples, num_processes)
            print(f"Estimated Pi: {pi_estimate}")
        """,
        tmp_path,
        method,
    )
    assert abs(float(lines_with(out, "Estimated Pi:")[0]) - math.pi) < 0.05


def test_004_9_2_dynamic_pool(tmp_path, method):
    # B15: `import concurrent.futures` added. Shortened: 12 tasks, work time
    # complexity * 0.01-0.05 s.
    out = run(
        """
        import fastmp as multiprocessing
        import concurrent.futures
        import time
        import random
        from fastmp import ProcessPoolExecutor

        def adaptive_worker(task_id, complexity):
            work_time = complexity * random.uniform(0.01, 0.05)
            time.sleep(work_time)
            if random.random() < 0.1:
                raise ValueError(f"Task {task_id} failed randomly")
            return f"Task {task_id} completed in {work_time:.2f}s"

        def dynamic_process_pool(tasks, initial_workers=2, max_workers=8):
            results = []
            failed_tasks = []
            with ProcessPoolExecutor(max_workers=initial_workers) as executor:
                futures = {}
                for task_id, complexity in tasks[:initial_workers*2]:
                    future = executor.submit(adaptive_worker, task_id, complexity)
                    futures[future] = (task_id, complexity)
                task_index = initial_workers * 2
                while futures:
                    done, _ = concurrent.futures.wait(
                        futures.keys(), timeout=0.1,
                        return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in done:
                        task_id, complexity = futures.pop(future)
                        try:
                            result = future.result()
                            results.append(result)
                            print(f"Success: {result}")
                        except Exception as e:
                            failed_tasks.append((task_id, complexity))
                            print(f"Failed: Task {task_id}, error: {e}")
                    current_workers = executor._max_workers
                    if len(failed_tasks) > len(results) / 2 and current_workers < max_workers:
                        new_workers = min(current_workers + 1, max_workers)
                        print(f"Increasing workers from {current_workers} to {new_workers}")
                    while len(futures) < current_workers * 2 and task_index < len(tasks):
                        task_id, complexity = tasks[task_index]
                        future = executor.submit(adaptive_worker, task_id, complexity)
                        futures[future] = (task_id, complexity)
                        task_index += 1
            return results, failed_tasks

        if __name__ == "__main__":
            tasks = [(i, random.randint(1, 5)) for i in range(12)]
            results, failed = dynamic_process_pool(tasks, initial_workers=2, max_workers=4)
            print(f"Completed: {len(results)} tasks")
            print(f"Failed: {len(failed)} tasks")
        """,
        tmp_path,
        method,
    )
    completed = int(lines_with(out, "Completed:")[0].split()[0])
    failed = int(lines_with(out, "Failed:")[-1].split()[0])
    assert completed + failed == 12
    ids = [int(m) for m in re.findall(r"(?:Success: Task|Failed: Task) (\d+)", out)]
    assert sorted(ids) == list(range(12))


def test_004_10_3_warm_up_with_lambda(tmp_path, method):
    # B16: the fragment's missing import added; the lambda itself works with fastmp.
    out = run(
        """
        from fastmp import Pool

        if __name__ == "__main__":
            with Pool() as pool:
                warm = pool.map(lambda x: x, range(pool._processes))
                print(f"warmed: {warm}")
        """,
        tmp_path,
        method,
    )
    import os

    assert ast.literal_eval(lines_with(out, "warmed:")[0]) == list(range(os.cpu_count()))
