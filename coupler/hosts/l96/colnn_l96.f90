!> colnn_l96 CONFIG.nml: the two-scale Lorenz-96 host (see l96_host). Run under mpirun for
!> more than one rank.
program colnn_l96
  use, intrinsic :: iso_fortran_env, only: error_unit
  use mpi_f08, only: MPI_Init, MPI_Finalize
  use, intrinsic :: iso_fortran_env, only: output_unit
  use l96_host, only: l96_host_main, l96_write_defaults
  implicit none
  character(len=4096) :: path
  integer :: code, ierr
  call MPI_Init(ierr)
  call get_command_argument(1, path)
  if (command_argument_count() == 1 .and. path == '--defaults') then
    call l96_write_defaults(output_unit)
    code = 0
  else if (command_argument_count() /= 1 .or. path(1:1) == '-') then
    write (error_unit, '(a)') 'usage: colnn_l96 CONFIG.nml | --defaults'
    code = 2
  else
    call l96_host_main(trim(path), code)
  end if
  call MPI_Finalize(ierr)
  if (code /= 0) stop code, quiet=.true.
end program colnn_l96
