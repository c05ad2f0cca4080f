! Runs the batched forward of a model and of a noisy ensemble over columns split across the MPI
! ranks, gathers on rank 0 and writes the result: the pytest suite compares -np 1 with -np 2.
program test_mpi
  use mpi_f08
  use colnn
  use colnn_mpi, only: decompose_columns, gather_columns
  implicit none
  integer, parameter :: n_global = 1001
  type(network_t) :: net
  type(ensemble_t) :: ens
  integer :: stat, ierr, rank, first, count, i, j, u
  character(len=ERRMSG_LEN) :: msg
  character(len=1024) :: model_path, ens_path, out_path
  real(wp), allocatable :: x(:, :), y(:, :), ym(:, :), yall(:, :), ymall(:, :)

  call MPI_Init(ierr)
  call MPI_Comm_rank(MPI_COMM_WORLD, rank, ierr)
  call get_command_argument(1, model_path)
  call get_command_argument(2, ens_path)
  call get_command_argument(3, out_path)

  call net%load(trim(model_path), stat, msg)
  if (stat /= 0) call fail('load: '//msg)
  call ens%load_dir(trim(ens_path), stat, msg)
  if (stat /= 0) call fail('ensemble: '//msg)
  call ens%set_noise([0.25_wp], 42_8, stat, msg)
  if (stat /= 0) call fail('noise: '//msg)

  call decompose_columns(n_global, MPI_COMM_WORLD, first, count, stat, msg)
  if (stat /= 0) call fail(msg)
  allocate (x(net%n_inputs, count), y(net%n_outputs, count), ym(ens%n_outputs, count))
  do j = 1, count
    do i = 1, net%n_inputs
      x(i, j) = sin(0.37_wp * i + 0.011_wp * (first + j - 1))
    end do
  end do
  call net%forward(x, y, stat, msg)
  if (stat /= 0) call fail('forward: '//msg)
  call ens%forward(x, ym, stat, msg, column_offset=int(first - 1, 8))
  if (stat /= 0) call fail('ensemble forward: '//msg)

  allocate (yall(net%n_outputs, n_global), ymall(ens%n_outputs, n_global))
  call gather_columns(y, yall, MPI_COMM_WORLD, 0, stat, msg)
  if (stat /= 0) call fail(msg)
  call gather_columns(ym, ymall, MPI_COMM_WORLD, 0, stat, msg)
  if (stat /= 0) call fail(msg)
  if (rank == 0) then
    open (newunit=u, file=trim(out_path), access='stream', form='unformatted', status='replace')
    write (u) yall, ymall
    close (u)
  end if
  call MPI_Finalize(ierr)

contains

  subroutine fail(text)
    character(len=*), intent(in) :: text
    print '(a,i0,a)', 'rank ', rank, ': '//trim(text)
    call MPI_Abort(MPI_COMM_WORLD, 1, ierr)
  end subroutine fail
end program test_mpi
