"""Instructor tooling: the exercise generator, the grader and nbgrader support.

Nothing here is imported by the lessons or the exercises; learners never need it.

    python -m course_lib.instructor.make_exercises   # exercises/ from solutions/
    python -m course_lib.instructor.grade            # grade submitted exercise notebooks
"""
